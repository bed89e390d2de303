"""The benchmarks' own arithmetic: train_overhead.py's windows; the MNIST path of entropic_training.py, its
quality number, one cached run and the classifier it was measured with; the toy path beside its
exact-denoiser floor."""

import json
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import entropic_training, train_overhead
from datasets.images import mnist_5k
from evaluation import fidelity


def test_overhead_windows_leave_out_only_the_spans_inside_them():
    times = [0.1 * k for k in range(31)]  # 30 steps of 0.1 s
    figures = [(1.05, 0.05), (2.95, 0.02), (5.0, 1.0)]  # in the 2nd window, in the 3rd, after the run
    rates = train_overhead.window_rates(times, warmup=0, window=10, left_out=figures)
    assert rates == pytest.approx([10 / 1.0, 10 / 0.95, 10 / 0.98])
    assert train_overhead.window_rates(times, warmup=5, window=10) == pytest.approx([10.0, 10.0])  # 5..15, 15..25


@pytest.mark.slow
def test_overhead_benchmark_prints_its_ratios(capsys, monkeypatch):
    monkeypatch.setattr(sys, 'argv', ['train_overhead.py', '--steps', '60', '--warmup', '10', '--window', '20',
                                      '--repeats', '1', 'trainer.plot_every=30', 'trainer.ckpt_every=30'])
    train_overhead.main()
    out = capsys.readouterr().out
    for line in ('hand-written loop:', 'hand-written, NVML check:', "Lightning's own loop:", 'train.py loop:',
                 'ratio train.py / hand-written:', 'whole runs, figures included', 'under the NVML check'):
        assert line in out, line
    left_out = float(out.split('left out: ')[1].split(' s')[0])
    assert left_out > 0  # the figures at step 30 fell inside the timed run


@pytest.fixture(scope='module')
def digits():
    return mnist_5k(28)


@pytest.fixture(scope='module')
def classifier(digits, tmp_path_factory):
    path = tmp_path_factory.mktemp('classifier') / 'classifier.pt'
    fidelity.train_classifier(digits, path, steps=300)
    model = fidelity.DigitClassifier()
    model.load_state_dict(torch.load(path, weights_only=True)['state_dict'])
    return model.eval(), path


class Sampler:
    """Stands in for a model: `sample(n, seed, class_label)` returns n images of that class from `images`."""

    def __init__(self, digits, images):
        self.num_classes, self.images = 10, images
        self.labels = digits.labels

    def sample(self, n, seed, class_label):
        index = (self.labels == class_label).nonzero()[:, 0]
        index = index[torch.randperm(len(index), generator=torch.Generator().manual_seed(seed))[:n]]
        return self.images[index]


def test_classifier_frechet_separates_real_digits_from_blurred_and_noise(digits, classifier):
    model, _ = classifier
    real = digits.images.float() / 127.5 - 1
    with torch.no_grad():
        reference = model.features(real)
    blurred = torch.nn.functional.avg_pool2d(real, 5, stride=1, padding=2)
    noise = torch.randn_like(real).clamp(-1, 1)
    fd = {name: entropic_training.classifier_frechet(Sampler(digits, images), model, reference, seed=0)
          for name, images in (('real', real), ('blurred', blurred), ('noise', noise))}
    # 1000 real digits against all 5000: only the small-sample bias of the Fréchet distance.
    assert 0 <= fd['real'] < 0.2 * fd['blurred'] < 0.2 * fd['noise'], fd


@pytest.mark.slow
def test_mnist_run_is_measured_cached_and_summarised(tmp_path, classifier, monkeypatch):
    config = tmp_path / 'tiny.yaml'
    config.write_text(Path('configs/mnist/fast.yaml').read_text().replace('ddpmpp-mnist-fast', 'ddpmpp-tiny')
                      .replace('batch_size: 32', 'batch_size: 8').replace('steps: 18', 'steps: 3')
                      .replace('P_std: 1.2', 'P_std: 1.2\n  spectrum_samples: 256'))
    monkeypatch.setitem(entropic_training.CONFIGS, 'mnist', str(config))
    monkeypatch.setattr(entropic_training, 'classifier_path', lambda data: classifier[1])
    monkeypatch.setattr(entropic_training, 'SAMPLES_PER_CLASS', 20)  # 200 samples per evaluation
    out = tmp_path / 'bench'
    results = {}
    for variant in ('lognormal', 'structure'):
        results['mnist', variant, 0] = entropic_training.run_one('mnist', variant, 0, steps=4, evals={2, 4}, out=out)
        assert results['mnist', variant, 0]['step'] == [2, 4]
        assert all(value > 0 for value in results['mnist', variant, 0]['fd'])
        assert 'gap' not in results['mnist', variant, 0]
    cached = json.loads((out / 'runs' / 'mnist-structure-0.json').read_text())
    assert cached == results['mnist', 'structure', 0]
    fingerprint = entropic_training.classifier_fingerprint(classifier[1])
    assert cached['classifier'] == fingerprint
    entropic_training.summarise(results, ['mnist'], ['lognormal', 'structure'], {'mnist': [0]}, out)
    table = (out / 'results.md').read_text()
    assert f'mnist classifier {fingerprint}' in table.splitlines()[0]
    assert '| mnist (1 seeds, classifier Fréchet distance) | structure |' in table
    assert (out / 'curves.png').is_file()

    # Another machine's classifier: its distances are in other features, so the cache is refused...
    other = tmp_path / 'other.pt'
    other.write_bytes(classifier[1].read_bytes() + b'\0')
    monkeypatch.setattr(entropic_training, 'classifier_path', lambda data: other)
    with pytest.raises(SystemExit, match='mnist-structure-0.json: measured with classifier ' + fingerprint):
        entropic_training.run_one('mnist', 'structure', 0, steps=4, evals={2, 4}, out=out)
    # ...and so is a summary that mixes the two.
    results['mnist', 'structure', 0] = {**cached, 'classifier': entropic_training.classifier_fingerprint(other)}
    with pytest.raises(SystemExit, match='mnist: cached runs measured with different classifiers'):
        entropic_training.summarise(results, ['mnist'], ['lognormal', 'structure'], {'mnist': [0]}, out)


def test_summarising_without_cached_runs_names_what_is_missing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, 'argv', ['entropic_training.py', '--summarise-only', '--datasets', 'ring', '--out', str(tmp_path)])
    with pytest.raises(SystemExit):
        entropic_training.main()
    assert f'no seed of ring has a cached run of every variant in {tmp_path / "runs"}' in capsys.readouterr().err


@pytest.mark.slow
def test_toy_runs_are_summarised_beside_the_exact_denoisers_floor(tmp_path):
    floor, = entropic_training.exact_floors('ring', [0])
    # The evaluation's own sampler with the exact denoiser lands on the 8 modes: a small gap.
    assert 0 < floor['gap'] < 0.2, floor
    out, results = tmp_path / 'bench', {}
    for variant in ('lognormal', 'structure'):
        results['ring', variant, 0] = entropic_training.run_one('ring', variant, 0, steps=20, evals={20}, out=out)
        assert results['ring', variant, 0]['step'] == [20]
        assert results['ring', variant, 0]['gap'][0] > 10 * floor['gap']  # 20 steps train nothing yet
    entropic_training.summarise(results, ['ring'], ['lognormal', 'structure'], {'ring': [0]}, out)
    row = next(line for line in (out / 'results.md').read_text().splitlines() if 'exact denoiser (floor)' in line)
    assert f"| {floor['gap']:.3f}±0.000 at every step | {floor['swd']:.4f} |" in row
