"""Long work shows progress on stderr: metrics.py's phases, the first training of fid.py's digit classifier;
and torch-fidelity's data loading asks for no more workers than the machine has cores."""

import os
import warnings

import pytest

import metrics
from datasets import build_dataset
from evaluation import fidelity, plots
from config import load_config


def _bars(capsys):
    """The last state of each progress bar on stderr: {description: line}."""
    lines = capsys.readouterr().err.replace('\r', '\n').splitlines()
    return {line.split(':', 2)[1].strip(): line for line in lines if line.startswith(('metrics:', 'fid:'))}


@pytest.fixture(scope='module')
def digits():
    return build_dataset(load_config('configs/mnist/small.yaml').data)


@pytest.mark.slow
def test_metrics_shows_the_progress_of_every_phase_of_a_toy_model(tiny_run, tmp_path, capsys):
    argv = ['--ckpt', str(tiny_run / 'checkpoints' / 'last.ckpt'), '--num', '100', '--steps', '3', '--likelihood', '5',
            '--sigma-plot', str(tmp_path / 'sigma.png')]
    metrics.main(argv)
    bars = _bars(capsys)
    assert set(bars) == {'sample', 'swd, mmd, nll', 'likelihood', 'σ plot'}
    assert '6/6' in bars['sample'] and '3/3' in bars['swd, mmd, nll'] and '128/128' in bars['likelihood'], bars
    assert '80/80' in bars['σ plot'] and all('100%' in bar for bar in bars.values()), bars
    metrics.main(argv + ['--quiet'])
    assert capsys.readouterr().err == ''


@pytest.mark.slow
def test_metrics_shows_the_progress_of_the_probe_and_the_likelihood_of_images(tiny_mnist_ckpt, capsys):
    metrics.main(['--ckpt', tiny_mnist_ckpt, '--device', 'cpu', '--probe', '--probe-train', '6', '--probe-test', '4',
                  '--likelihood', '2'])
    bars = _bars(capsys)
    assert '10/10' in bars['probe features'] and '64/64' in bars['likelihood'], bars


def test_the_digit_classifier_counts_its_training_steps(digits, tmp_path, capsys):
    fidelity.train_classifier(digits, tmp_path / 'classifier.pt', steps=5)
    assert '5/5' in _bars(capsys)['digit classifier']
    fidelity.train_classifier(digits, tmp_path / 'classifier.pt', steps=5, quiet=True)
    assert capsys.readouterr().err == ''


def test_torch_fidelity_loads_images_with_no_more_workers_than_cores(digits, tmp_path, monkeypatch):
    classifier = tmp_path / 'classifier.pt'
    fidelity.train_classifier(digits, classifier, steps=2, quiet=True)
    for i, image in enumerate(digits.images[:4].cpu()):
        plots.save_image(image, tmp_path / 'images' / f'{i:06d}.png')
    monkeypatch.setattr(os, 'sched_getaffinity', lambda pid: {0})  # one core (DataLoader counts them so too)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        result = fidelity.image_metrics(tmp_path / 'images', digits, metrics=('fid',), features='classifier',
                                        weights=classifier, cache_root=tmp_path / 'cache', num_reference=8)
    assert 'frechet_inception_distance' in result
    assert not [w for w in caught if 'worker' in str(w.message)], [str(w.message) for w in caught]
