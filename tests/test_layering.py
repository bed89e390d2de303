"""The layout holds: the plain-torch packages import no Lightning and nothing from training/, no
script imports another, and a checkpoint samples without Lightning or its training data."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train
from sampling_model import load_model

ROOT = Path(__file__).resolve().parent.parent
PLAIN_TORCH = ('sampling', 'entropy', 'networks', 'datasets', 'evaluation')
SCRIPTS = ('train', 'sample', 'metrics', 'fid', 'plot_profile')


def imported_modules(path):
    """The top-level names of every module `path` imports (at any depth of the file)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split('.')[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split('.')[0])
    return names


@pytest.mark.parametrize('package', PLAIN_TORCH)
def test_plain_torch_packages_import_no_lightning_and_nothing_from_training(package):
    files = sorted((ROOT / package).glob('*.py'))
    assert files
    for path in files:
        bad = imported_modules(path) & {'lightning', 'pytorch_lightning', 'training', *SCRIPTS}
        assert not bad, f'{path.relative_to(ROOT)} imports {sorted(bad)}'


def test_no_script_imports_another():
    for script in SCRIPTS:
        bad = imported_modules(ROOT / f'{script}.py') & (set(SCRIPTS) - {script})
        assert not bad, f'{script}.py imports {sorted(bad)}'


def test_the_layering_test_sees_a_violation(tmp_path):
    (tmp_path / 'bad.py').write_text('def f():\n    from training.module import EDMModule\n    import lightning as L\n')
    assert {'training', 'lightning'} <= imported_modules(tmp_path / 'bad.py')


@pytest.mark.slow
def test_a_checkpoint_samples_without_lightning(tiny_run):
    code = ('import sys; from sampling_model import load_model; '
            f"x = load_model({str(tiny_run / 'checkpoints' / 'last.ckpt')!r}, device='cpu').sample(10, steps=3); "
            "print(tuple(x.shape), 'lightning' in sys.modules)")
    result = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ['(10,', '2)', 'False']


@pytest.fixture(scope='module')
def mnist_checkpoint(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp('mnist')
    train.main(['--config', 'configs/mnist/small.yaml', 'network.preset=ddpmpp-tiny', 'trainer.max_steps=2',
                'trainer.batch_size=4', 'trainer.progress_bar=false', 'sample.num=4', 'sample.steps=2',
                'noise.spectrum_samples=256', f'run_dir={run_dir}'])
    return run_dir / 'checkpoints' / 'last.ckpt'


@pytest.mark.slow
def test_an_image_checkpoint_samples_with_no_dataset(mnist_checkpoint, monkeypatch):
    import datasets

    def no_data(config):
        raise AssertionError('the dataset was built')
    monkeypatch.setitem(datasets.DATASETS, 'mnist-5k', no_data)
    model = load_model(mnist_checkpoint, device='cpu')
    assert model.shape == (1, 32, 32) and model.num_classes == 10
    assert model.sample(2, steps=2, class_label=3).shape == (2, 1, 32, 32)


@pytest.mark.slow
def test_a_checkpoint_from_before_the_data_shape_was_stored_still_samples(mnist_checkpoint, tmp_path):
    old = torch.load(mnist_checkpoint, weights_only=True)
    del old['cedm']['data_shape'], old['cedm']['num_classes']
    torch.save(old, tmp_path / 'old.ckpt')
    model = load_model(tmp_path / 'old.ckpt', device='cpu')  # builds the dataset for its shape
    assert model.shape == (1, 32, 32) and model.num_classes == 10
    torch.testing.assert_close(model.sample(2, steps=2, seed=5), load_model(mnist_checkpoint, device='cpu').sample(2, steps=2, seed=5))


def test_the_sampler_and_what_it_reads_import_nothing_from_training():
    """A checkpoint's reading (checkpoint_file), its config (config) and the sampler (sampling_model) stand
    outside training/, which imports them: no cycle between the sampler and the training package."""
    for name in ('sampling_model', 'checkpoint_file', 'config'):
        bad = imported_modules(ROOT / f'{name}.py') & {'lightning', 'pytorch_lightning', 'training', *SCRIPTS}
        assert not bad, f'{name}.py imports {sorted(bad)}'


def test_the_configs_noise_names_are_the_registrys():
    from config import NOISE_NAMES
    from training.noise import NOISE
    assert sorted(NOISE_NAMES) == sorted(NOISE)
