"""End to end: train -> checkpoint -> sample -> metrics, resume, and one-line errors for bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import metrics
import sample
import train
from checkpoint_file import CheckpointError, read_checkpoint
from sampling_model import load_model

pytestmark = pytest.mark.slow


def test_training_writes_run_directory(tiny_run):
    assert (tiny_run / 'config.yaml').is_file()
    ckpts = sorted(p.name for p in (tiny_run / 'checkpoints').glob('*.ckpt'))
    assert ckpts == ['last.ckpt', 'step-0000030.ckpt', 'step-0000060.ckpt']
    checkpoint, config = read_checkpoint(tiny_run / 'checkpoints' / 'last.ckpt')
    assert checkpoint['global_step'] == 70 and config.trainer.max_steps == 70
    assert config.run_dir == str(tiny_run)
    assert set(checkpoint['cedm']) == {'format', 'config', 'ema', 'posthoc_ema', 'ranks', 'profile', 'nonfinite_steps',
                                       'data_shape', 'num_classes'}
    events = list((tiny_run / 'tensorboard').glob('events.out.tfevents.*'))
    assert events


def test_checkpoints_hold_every_step_s_errors_in_the_profile(tiny_run):
    # No refresh within 70 steps (every 100): each checkpoint holds every training error so far among
    # its profile's pending statistics, though training bins them only every so many steps.
    for step in (30, 60):
        checkpoint, _ = read_checkpoint(tiny_run / 'checkpoints' / f'step-{step:07d}.ckpt')
        pending = checkpoint['cedm']['ranks'][0]['profile_pending'][1].sum().item()
        assert step * 128 - 3 <= pending <= step * 128  # lognormal σ beyond [0.002, 80] is dropped (p ≈ 2e-5)


def test_tensorboard_has_scalars_and_figures(tiny_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(tiny_run / 'tensorboard'), size_guidance={'images': 0}).Reload()
    tags = acc.Tags()
    for tag in ('train/loss', 'train/lr', 'train/grad_norm', 'eval/swd', 'eval/mmd', 'eval/nll'):
        assert tag in tags['scalars'], tag
    assert {'samples', 'loss_vs_sigma'} <= set(tags['images'])
    lr = [e.value for e in acc.Scalars('train/lr')]
    assert lr[0] < lr[-1]  # warm-up
    # Every trainer.log_every steps, at Lightning's step numbers (0-based: the steps taken before).
    for tag in ('train/loss', 'train/grad_norm', 'train/nonfinite_steps', 'sigma/q10', 'sigma/q50', 'sigma/q90'):
        assert [e.step for e in acc.Scalars(tag)] == [9, 19, 29, 39, 49, 59, 69], tag
    q10, q90 = acc.Scalars('sigma/q10')[0].value, acc.Scalars('sigma/q90')[0].value
    assert 0.02 < q10 < 0.3 < q90 < 3  # lognormal(-1.2, 1.2): 0.064 and 1.42


def test_progress_bar_shows_the_loss(tmp_path, capfd):
    train.main(['trainer.max_steps=20', 'trainer.log_every=10', 'trainer.batch_size=64', 'sample.num=50',
                f'run_dir={tmp_path}'])
    assert "loss=" in capfd.readouterr().out  # Lightning draws its bar on stdout


def test_sample_script_writes_npz_and_png(tiny_run, tmp_path):
    ckpt = tiny_run / 'checkpoints' / 'last.ckpt'
    sample.main(['--ckpt', str(ckpt), '--num', '300', '--steps', '6', '--out', str(tmp_path), '--trajectories'])
    x = np.load(tmp_path / 'samples.npz')['x']
    assert x.shape == (300, 2) and np.isfinite(x).all()
    assert (tmp_path / 'samples.png').stat().st_size > 1000 and (tmp_path / 'trajectories.png').is_file()


def test_sample_script_seed_ranges_are_batch_independent(tiny_run, tmp_path):
    ckpt = str(tiny_run / 'checkpoints' / 'last.ckpt')
    sample.main(['--ckpt', ckpt, '--seeds', '0-49', '--batch', '16', '--steps', '5', '--solver', 'euler_ancestral',
                 '--out', str(tmp_path / 'all')])
    sample.main(['--ckpt', ckpt, '--seeds', '20-29', '--steps', '5', '--solver', 'euler_ancestral', '--out', str(tmp_path / 'part')])
    whole, part = np.load(tmp_path / 'all' / 'samples.npz'), np.load(tmp_path / 'part' / 'samples.npz')
    assert whole['x'].shape == (50, 2) and whole['seeds'].tolist() == list(range(50))
    np.testing.assert_allclose(whole['x'][20:30], part['x'], atol=1e-5)  # float rounding depends on the batch


def test_python_api_is_reproducible_and_uses_ema(tiny_run):
    model = load_model(tiny_run / 'checkpoints' / 'last.ckpt', device='cpu')
    a = model.sample(100, steps=5, seed=1)
    assert torch.equal(a, model.sample(100, steps=5, seed=1))
    assert not torch.equal(a, model.sample(100, steps=5, seed=2))
    assert not torch.equal(a, model.sample(100, steps=5, seed=1, use_ema=False))
    for solver in ('euler', 'ddim', 'euler_ancestral', 'dpmpp_2m'):
        assert torch.isfinite(model.sample(50, steps=4, solver=solver, schedule='loglinear')).all()


def test_metrics_script_reports_model_and_floor(tiny_run, tmp_path, capsys):
    out = tmp_path / 'm.json'
    metrics.main(['--ckpt', str(tiny_run / 'checkpoints' / 'last.ckpt'), '--num', '500', '--steps', '8',
                  '--json', str(out), '--sigma-plot', str(tmp_path / 'sigma.png')])
    table = json.loads(out.read_text())
    assert set(table) == {'model', 'exact denoiser', 'ground truth'}
    assert set(table['model']) == {'swd', 'mmd', 'nll'}
    # After 70 steps the model is far worse than its exact-denoiser floor.
    assert table['model']['swd'] > table['exact denoiser']['swd']
    assert 'exact denoiser' in capsys.readouterr().out
    assert (tmp_path / 'sigma.png').is_file()


def test_resume_continues_the_run(tiny_run, tmp_path):
    src = tiny_run / 'checkpoints' / 'step-0000030.ckpt'
    run_dir = tmp_path / 'resumed'
    train.main(['--resume', str(src), f'run_dir={run_dir}', 'trainer.max_steps=45'])
    checkpoint, config = read_checkpoint(run_dir / 'checkpoints' / 'last.ckpt')
    assert checkpoint['global_step'] == 45 and config.resume == str(src)
    assert config.sample.num == 200  # the stored config, not the default file
    # Sampling the resumed run gives the step-45 model, not the checkpoint it started from.
    sample.main(['--ckpt', str(run_dir / 'checkpoints' / 'last.ckpt'), '--num', '50', '--steps', '4', '--out', str(tmp_path / 's')])
    resumed = np.load(tmp_path / 's' / 'samples.npz')['x']
    assert np.allclose(resumed, load_model(run_dir / 'checkpoints' / 'last.ckpt', device='cpu').sample(50, steps=4).numpy(), atol=1e-6)
    assert not np.allclose(resumed, load_model(src, device='cpu').sample(50, steps=4).numpy(), atol=1e-3)


def _one_line_error(capsys, fn, args):
    with pytest.raises(SystemExit) as info:
        fn(args)
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2
    assert len(err.splitlines()) == 1, err
    return err


def test_bad_input_gives_one_line(tiny_run, tmp_path, capsys):
    ckpt = str(tiny_run / 'checkpoints' / 'last.ckpt')
    assert 'trainer.max_stepz: unknown key' in _one_line_error(capsys, train.main, ['trainer.max_stepz=3'])
    assert 'unrecognized arguments: --bogus' in _one_line_error(capsys, train.main, ['--bogus'])
    assert 'nope.yaml: config file not found' in _one_line_error(capsys, train.main, ['--config', 'nope.yaml'])
    assert 'checkpoint file not found' in _one_line_error(capsys, sample.main, ['--ckpt', str(tmp_path / 'x.ckpt')])
    assert '--num: must be > 0' in _one_line_error(capsys, sample.main, ['--ckpt', ckpt, '--num', '-5'])
    assert "invalid choice: 'rk9'" in _one_line_error(capsys, sample.main, ['--ckpt', ckpt, '--solver', 'rk9'])
    assert 'resume=auto needs run_dir' in _one_line_error(capsys, train.main, ['resume=auto'])
    assert "--seeds: '5-2': empty range" in _one_line_error(capsys, sample.main, ['--ckpt', ckpt, '--seeds', '5-2'])
    assert '--num and --seeds: give one' in _one_line_error(capsys, sample.main, ['--ckpt', ckpt, '--seeds', '0-3', '--num', '4'])
    assert '--batch: must be > 0' in _one_line_error(capsys, sample.main, ['--ckpt', ckpt, '--seeds', '0-3', '--batch', '0'])

    truncated = tmp_path / 'truncated.ckpt'
    truncated.write_bytes((tiny_run / 'checkpoints' / 'last.ckpt').read_bytes()[:5000])
    foreign = tmp_path / 'foreign.ckpt'
    torch.save({'state_dict': {}}, foreign)
    garbage = tmp_path / 'garbage.ckpt'
    garbage.write_bytes(b'not a checkpoint at all')
    for path, reason in ((truncated, 'cannot be read'), (foreign, 'not a cedm checkpoint'), (garbage, 'cannot be read')):
        for fn, args in ((sample.main, ['--ckpt', str(path)]), (metrics.main, ['--ckpt', str(path)]),
                         (train.main, ['--resume', str(path)])):
            err = _one_line_error(capsys, fn, args)
            assert str(path) in err and reason in err


def test_stale_config_in_checkpoint_is_named(tiny_run, tmp_path):
    checkpoint = torch.load(tiny_run / 'checkpoints' / 'last.ckpt', weights_only=True)
    checkpoint['cedm']['config']['optim']['lr'] = -1.0
    path = tmp_path / 'stale.ckpt'
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError, match=r'stale.ckpt: its stored config no longer validates: optim.lr'):
        read_checkpoint(path)


def test_command_line_error_from_a_real_process():
    result = subprocess.run([sys.executable, 'train.py', 'optim.lr=-1'], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == 'train.py: error: optim.lr: must be a finite number > 0 (got -1.0)'


@pytest.fixture(scope='module')
def entropic_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp('runs') / 'entropic'
    train.main(['noise.name=entropic', 'noise.warmup_steps=20', 'noise.refresh_every=10', 'trainer.max_steps=60',
                'trainer.log_every=10', 'trainer.plot_every=60', 'trainer.ckpt_every=60', 'trainer.progress_bar=false',
                'trainer.batch_size=128', 'sample.num=200', f'run_dir={run_dir}'])
    return run_dir


def test_entropic_training_draws_from_the_refreshed_profile(entropic_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    model = load_model(entropic_run / 'checkpoints' / 'last.ckpt', device='cpu')
    assert model.profile.num_refreshes.item() == 6  # steps 10, 20, ..., 60, all before the checkpoint at 60
    assert torch.isfinite(model.profile.rate()[1]).all()
    summary = json.loads((entropic_run / 'profile.json').read_text())
    assert len(summary['sigma']) == 64 and summary['entropy_nats'][-1] > 0
    assert (entropic_run / 'profile.png').is_file()
    # Warm-up steps draw lognormal σ (median e^-1.2 = 0.30); afterwards the entropic density puts
    # its median far lower, where every smooth density has rate ≈ d nats per e-fold.
    acc = EventAccumulator(str(entropic_run / 'tensorboard')).Reload()
    median = {e.step: e.value for e in acc.Scalars('sigma/q50')}
    assert sorted(median) == [9, 19, 29, 39, 49, 59]
    assert 0.1 < median[9] < 0.9 and 0.1 < median[19] < 0.9
    assert max(median[s] for s in (29, 39, 49, 59)) < 0.1
    assert 'profile' in acc.Tags()['images']


def test_importance_weighting_mode_trains(tmp_path):
    train.main(['noise.name=entropic', 'noise.weighting=importance', 'noise.warmup_steps=10', 'noise.refresh_every=5',
                'trainer.max_steps=20', 'trainer.progress_bar=false', 'trainer.batch_size=64', 'sample.num=100',
                f'run_dir={tmp_path}'])
    checkpoint, _ = read_checkpoint(tmp_path / 'checkpoints' / 'last.ckpt')
    assert checkpoint['global_step'] == 20


@pytest.mark.parametrize('density', ['structure', 'rescaled-structure'])
def test_structure_density_trains_and_logs_its_fraction(tmp_path, density):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    train.main(['noise.name=entropic', f'noise.density={density}', 'noise.warmup_steps=10', 'noise.refresh_every=5',
                'trainer.max_steps=30', 'trainer.log_every=10', 'trainer.progress_bar=false', 'trainer.batch_size=64',
                'sample.num=100', f'run_dir={tmp_path}'])
    model = load_model(tmp_path / 'checkpoints' / 'last.ckpt', device='cpu')
    assert model.profile.spectrum is not None and model.profile.density == density
    fractions = [e.value for e in EventAccumulator(str(tmp_path / 'tensorboard')).Reload().Scalars('noise/structure_fraction')]
    assert len(fractions) == 3 and all(0 <= f <= 1 for f in fractions)
    summary = json.loads((tmp_path / 'profile.json').read_text())
    assert len(summary['structure_rate_nats_per_log_sigma']) == 64 and np.isfinite(summary['lmmse']).all()


def test_entropic_schedules_from_the_checkpoint(entropic_run, tmp_path, capsys):
    ckpt = str(entropic_run / 'checkpoints' / 'last.ckpt')
    model = load_model(ckpt, device='cpu')
    for schedule in ('entropic', 'rescaled-entropic', 'structure', 'rescaled-structure', 'surrogate'):
        sigmas = model.sigmas(8, schedule)
        assert len(sigmas) == 9 and sigmas[-1] == 0 and (sigmas[1:] < sigmas[:-1]).all()
        assert sigmas[0] == pytest.approx(80.0)  # the profile schedules end in a denoising step from above σ_min
        assert sigmas[-2] == pytest.approx(0.002) if schedule == 'surrogate' else sigmas[-2] > 0.002
        sample.main(['--ckpt', ckpt, '--schedule', schedule, '--steps', '8', '--num', '100', '--out', str(tmp_path / schedule)])
        assert np.load(tmp_path / schedule / 'samples.npz')['x'].shape == (100, 2)
    # --estimate-profile replaces the training-time profile by an offline one from the model itself.
    sample.main(['--ckpt', ckpt, '--schedule', 'entropic', '--steps', '8', '--num', '100', '--estimate-profile',
                 '--out', str(tmp_path / 'estimated')])
    assert np.isfinite(np.load(tmp_path / 'estimated' / 'samples.npz')['x']).all()


def test_plot_profile_writes_figure_and_a_valid_logistic_override(entropic_run, tmp_path, capsys):
    import plot_profile
    from config import load_config
    out = tmp_path / 'p.png'
    plot_profile.main(['--ckpt', str(entropic_run / 'checkpoints' / 'last.ckpt'), '--out', str(out), '--steps', '10'])
    assert out.stat().st_size > 1000
    line = [l for l in capsys.readouterr().out.splitlines() if l.startswith('logistic log-SNR fit:')][0]
    overrides = line.split(':', 1)[1].split()
    config = load_config('configs/toy/default.yaml', overrides)
    assert config.noise.name == 'logistic' and config.noise.scale > 0


def test_metrics_likelihood(tiny_run, tmp_path):
    out = tmp_path / 'm.json'
    metrics.main(['--ckpt', str(tiny_run / 'checkpoints' / 'last.ckpt'), '--num', '200', '--steps', '4',
                  '--likelihood', '100', '--json', str(out)])
    result = json.loads(out.read_text())['likelihood']
    exact = result['exact -log p']['nats']
    # The exact denoiser's I-MMSE estimate recovers the exact NLL; a 70-step model is much worse.
    assert result['exact denoiser (I-MMSE)']['nats'] == pytest.approx(exact, abs=0.25)
    assert result['model (I-MMSE)']['nats'] > exact + 0.5
    assert result['model (I-MMSE)']['bits_per_dim'] == pytest.approx(result['model (I-MMSE)']['nats'] / (2 * np.log(2)))


@pytest.mark.parametrize('overrides', [
    ['precond.name=vp', 'data.name=moons'],
    ['precond.name=ve', 'data.name=checkerboard', 'noise.name=loguniform'],
    ['--config', 'configs/toy/gmm.yaml', 'noise.name=logistic', 'optim.grad_clip=1.0'],
    ['--config', 'configs/toy/tree.yaml', 'network.width=32'],
])
def test_preconditionings_datasets_and_distributions_train(overrides, tmp_path):
    train.main(overrides + ['trainer.max_steps=4', 'trainer.plot_every=4', 'trainer.log_every=2', 'sample.num=64',
                            'sample.steps=4', 'trainer.batch_size=32', 'trainer.progress_bar=false', f'run_dir={tmp_path}'])
    model = load_model(tmp_path / 'checkpoints' / 'last.ckpt', device='cpu')
    assert torch.isfinite(model.sample(32, steps=4)).all()
    metrics.main(['--ckpt', str(tmp_path / 'checkpoints' / 'last.ckpt'), '--num', '64', '--steps', '3'])


def test_profile_figure_draws_the_density_the_run_trained_with(tiny_run):
    """The tiny run draws σ from EDM's lognormal (P_mean −1.2): the figure's training density peaks at
    σ = e^−1.2 per log σ, wherever the profile's own entropic density (drawn too, labelled) peaks."""
    from evaluation import plots
    from training.noise import build_noise
    model = load_model(tiny_run / 'checkpoints' / 'last.ckpt', device='cpu')
    lines = {line.get_label(): line for line in plots.profile_figure(
        model.profile, training_log_density=build_noise(model.config.noise, model.profile).log_density).axes[0].lines}
    trained = lines['training σ density (scaled)']
    peak = trained.get_xdata()[np.argmax(trained.get_ydata())]
    assert abs(np.log(peak) + 1.2) < 0.15  # within a bin of the grid (64 bins over log(80/0.002))
    assert "the profile's entropic σ density (scaled)" in lines
