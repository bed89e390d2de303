"""benchmarks/entropic_sampling.py: paired draws, proper scores, and a 'better than karras' that needs
reverse KL and SWD to agree beyond their noise."""

import math


from benchmarks import entropic_sampling as bench
from datasets import build_dataset
from config import DataConfig


def _rows(kl, swd, name):
    return [{'model': 'm', 'solver': 'euler', 'nfe': 8, 'schedule': name, 'draw': i, 'kl': k, 'swd': s}
            for i, (k, s) in enumerate(zip(kl, swd))]


def test_better_than_karras_needs_both_scores_beyond_their_t_intervals():
    karras = _rows([1.0, 1.2, 0.9, 1.1], [0.10, 0.12, 0.09, 0.11], 'karras')
    better = _rows([0.5, 0.7, 0.4, 0.6], [0.05, 0.07, 0.04, 0.06], 'entropic')   # both lower in every draw
    sharper = _rows([0.5, 0.7, 0.4, 0.6], [0.12, 0.14, 0.11, 0.13], 'entropic')  # KL lower, SWD higher
    noisy = _rows([0.2, 2.0, 0.1, 2.1], [0.01, 0.30, 0.02, 0.28], 'entropic')    # lower on average, not beyond the noise
    # KL lower by 2.2 standard errors over 4 draws: outside ±2 SE, inside the t-interval (t = 3.18 at 3 dof)
    two_se = _rows([-0.8, 1.0, -0.9, 0.9], [0.05, 0.07, 0.04, 0.06], 'entropic')
    assert bench.beats_karras(karras + better, 'm', 'euler', 8, 'entropic')
    assert not bench.beats_karras(karras + sharper, 'm', 'euler', 8, 'entropic')
    assert not bench.beats_karras(karras + noisy, 'm', 'euler', 8, 'entropic')
    assert not bench.beats_karras(karras + two_se, 'm', 'euler', 8, 'entropic')


def test_exact_denoiser_run_scores_every_schedule_on_paired_draws():
    mixture = build_dataset(DataConfig(name='ring')).mixture
    rows = bench.evaluate('ring', mixture, mixture, nfes=[4, 32], num=400, draws=2, exact=True)
    assert len(rows) == 2 * len(bench.SOLVERS) * 2 * len(bench.SCHEDULES)
    assert all(math.isfinite(r['kl']) and r['swd'] > 0 and r['rmse'] >= 0 for r in rows)
    for solver in bench.SOLVERS:  # more steps: closer to the 512-step solution from the same noise
        few = bench._values(rows, 'ring', solver, 4 if solver != 'heun' else 3, 'karras', 'rmse')
        many = bench._values(rows, 'ring', solver, 32 if solver != 'heun' else 31, 'karras', 'rmse')
        assert (many < few).all(), solver
    text = bench.table(rows)
    assert 'mean ± standard error over 2 noise draws' in text and '| heun | 31 |' in text


def test_each_model_is_cached_when_measured_and_remeasured_only_for_other_settings(tmp_path, monkeypatch):
    mixture = build_dataset(DataConfig(name='ring')).mixture
    rows = bench.cached_evaluate(tmp_path, 'ring, exact denoiser', mixture, mixture, nfes=[4], num=200, draws=1, exact=True)
    measured = []
    monkeypatch.setattr(bench, 'evaluate', lambda *args, **kwargs: measured.append(args) or [{'fresh': True}])
    # A later run (after a kill, say) takes the finished model from DIR/rows/ as it was measured.
    again = bench.cached_evaluate(tmp_path, 'ring, exact denoiser', mixture, mixture, nfes=[4], num=200, draws=1, exact=True)
    assert again == rows and not measured
    assert bench.cached_evaluate(tmp_path, 'ring, exact denoiser', mixture, mixture, nfes=[4], num=300, draws=1,
                                 exact=True) == [{'fresh': True}]
    assert bench.cached_evaluate(tmp_path, 'tree, exact denoiser', mixture, mixture, nfes=[4], num=300, draws=1,
                                 exact=True) == [{'fresh': True}]
    assert len(measured) == 2
