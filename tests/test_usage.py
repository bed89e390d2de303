"""A newcomer's mistakes at the command line: each one is a single stderr line naming the flag, exit
code 2, found before any sampling; --help and flag errors import neither torch nor Lightning;
progress bars; NVlabs/edm's flag names; fid.py's numbers named for their features."""

import json
import subprocess
import sys

import pytest
import torch

import cli
import fid
import metrics
import plot_profile
import sample
import train


def _accelerator_case():
    """trainer.accelerator=gpu on a machine without one, or more devices than it has."""
    if not torch.cuda.is_available():
        return 'trainer.accelerator=gpu', 'trainer.accelerator: gpu, but this machine has no CUDA device'
    return f'trainer.devices={torch.cuda.device_count() + 1}', 'trainer.devices:'


def _cuda_case():
    """A --device that this machine lacks: cuda itself, or one GPU past its last."""
    if not torch.cuda.is_available():
        return 'cuda', '--device: cuda is not available on this machine (use --device cpu)'
    return f'cuda:{torch.cuda.device_count()}', f'--device: cuda:{torch.cuda.device_count()}: this machine has'


# (script, argv with {ckpt}, {run}, {file}, {dir}, {images} filled in, the start of the message after 'error: ')
CASES = [
    (sample, ['--ckpt', '{ckpt}', '--device', _cuda_case()[0]], _cuda_case()[1]),
    (sample, ['--ckpt', '{ckpt}', '--device', 'tpu'], "--device: 'tpu' is not a device"),
    (sample, ['--ckpt', '{ckpt}', '--out', '{file}'], '--out: {file} is a file, not a folder'),
    (sample, ['--ckpt', '{ckpt}', '--out', '{file}/samples'], '--out: cannot create {file}/samples: {file} is a file'),
    (sample, ['--ckpt', '{ckpt}', '--sigma-min', '100'], "--sigma-min: must be below the checkpoint's sample.sigma_max"),
    (sample, ['--ckpt', '{ckpt}', '--sigma-max', '0.001'], "--sigma-max: must be above the checkpoint's sample.sigma_min"),
    (sample, ['--ckpt', '{ckpt}', '--sigma-min', '5', '--sigma-max', '1'], '--sigma-min: must be below --sigma-max'),
    (sample, ['--ckpt', '{ckpt}', '--schedule', 'entropic', '--steps', '1'], '--schedule entropic: num_steps'),
    (sample, ['--ckpt', '{run}'], '--ckpt: {run} is a folder (use --ckpt {ckpt})'),
    (sample, ['--ckpt', '{dir}'], '--ckpt: {dir} is a folder, not a checkpoint file'),
    (sample, ['--ckpt', '{ckpt}', '--guidance', '2'], '--guidance: this model is not class-conditional'),
    (sample, ['--ckpt', '{ckpt}', '--guidance', '-1'], '--guidance: must be a number >= 0'),
    (sample, ['--ckpt', '{ckpt}', '--json', '{dir}/fid.json'], '--json: a flag of --fid'),
    (sample, ['--ckpt', '{ckpt}', '--seeds', '0-3', '--fid', '--metrics', 'fid,fdi'], '--metrics: unknown fdi'),
    (sample, ['--ckpt', '{ckpt}', '--seeds', '0-3', '--fid'], "--fid: {ckpt}: not an image model"),
    (sample, ['--network', '{ckpt}', '--outdir', '{file}'], '--out: {file} is a file'),
    (metrics, ['--ckpt', '{ckpt}', '--device', 'tpu'], "--device: 'tpu' is not a device"),
    (metrics, ['--ckpt', '{ckpt}', '--sigma-plot', '{file}/sigma.png'], '--sigma-plot: cannot create {file}/sigma.png'),
    (metrics, ['--ckpt', '{ckpt}', '--json', '{dir}'], '--json: {dir} is a folder'),
    (metrics, ['--ckpt', '{ckpt}', '--sigma-min', '100'], "--sigma-min: must be below the checkpoint's sample.sigma_max"),
    (metrics, ['--ckpt', '{run}'], '--ckpt: {run} is a folder (use --ckpt {ckpt})'),
    (fid, ['--images', '{images}', '--ckpt', '{ckpt}', '--device', 'tpu'], "--device: 'tpu' is not a device"),
    (fid, ['--images', '{images}', '--ckpt', '{ckpt}', '--device', _cuda_case()[0]], _cuda_case()[1]),
    (fid, ['--images', '{images}', '--ckpt', '{ckpt}', '--json', '{dir}'], '--json: {dir} is a folder'),
    (fid, ['--images', '{images}', '--ckpt', '{ckpt}', '--json', '{file}/fid.json'], '--json: cannot create'),
    (fid, ['--images', '{images}', '--ckpt', '{ckpt}', '--metrics', 'fid,fdi'], '--metrics: unknown fdi'),
    (fid, ['--images', '{images}', '--ckpt', '{ckpt}', '--fid-weights', '{dir}/none.pth'], '--fid-weights: {dir}/none.pth: file'),
    (fid, ['--images', '{images}', '--ckpt', '{ckpt}', '--cache-dir', '{file}'], '--cache-dir: {file} is a file'),
    (fid, ['--images', '{file}', '--ckpt', '{ckpt}'], '--images: {file}: a file, not a folder'),
    (fid, ['--images', '{images}', '--ckpt', '{run}'], '--ckpt: {run} is a folder'),
    (fid, ['--images', '{images}', '--network', '{run}'], '--ckpt: {run} is a folder'),
    (plot_profile, ['--ckpt', '{ckpt}', '--out', '{dir}'], '--out: {dir} is a folder'),
    (plot_profile, ['--ckpt', '{ckpt}', '--device', 'tpu'], "--device: 'tpu' is not a device"),
    (plot_profile, ['--ckpt', '{run}'], '--ckpt: {run} is a folder (use --ckpt {ckpt})'),
    (train, ['--config', 'configs/toy/moons.yaml', '--config', 'configs/toy/tree.yaml'], '--config: given 2 times'),
    (train, [_accelerator_case()[0], 'run_dir={dir}/run'], _accelerator_case()[1]),
    (train, ['run_dir={file}/run'], 'run_dir: cannot create {file}/run: {file} is a file'),
    (train, ['--resume', '{ckpt}', 'trainer.max_steps=10', 'run_dir={dir}/run'], 'trainer.max_steps: 10 is not beyond step 70 of {ckpt}'),
    (train, ['trainer.max_stepz=10'], "trainer.max_stepz: unknown key (did you mean 'trainer.max_steps'?)"),
    (train, ['--resume', '{run}'], '--resume: {run} is a folder (use --resume {ckpt})'),
    (sample, ['--ckpt', '{ckpt}', '--class', 'abc'], "--class: 'abc' is not a class or a range such as 0-9 (or 'none')"),
]


@pytest.fixture
def paths(tiny_run, tmp_path):
    (tmp_path / 'images').mkdir()
    (tmp_path / 'a-file').write_text('not a folder')
    (tmp_path / 'empty').mkdir()
    return {'ckpt': tiny_run / 'checkpoints' / 'last.ckpt', 'run': tiny_run, 'file': tmp_path / 'a-file',
            'dir': tmp_path / 'empty', 'images': tmp_path / 'images'}


def _one_line_error(capsys, script, argv):
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        script.main(argv)
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and len(err.splitlines()) == 1, err
    return err.split(': error: ', 1)[1]


@pytest.mark.slow
@pytest.mark.parametrize('script, argv, message', CASES, ids=[f"{s.__name__}{m.split(':')[0]}" for s, _, m in CASES])
def test_mistake_is_one_line_naming_the_flag(script, argv, message, paths, capsys):
    fill = lambda text: text.format(**paths)  # noqa: E731
    err = _one_line_error(capsys, script, [fill(a) for a in argv])
    assert err.startswith(fill(message)), err
    assert not any(paths['dir'].iterdir())  # nothing written


@pytest.mark.slow
def test_mistakes_are_found_before_sampling(paths, capsys, monkeypatch):
    """The checks that need the checkpoint run before the model draws a single sample."""
    from sampling_model import SamplingModel
    monkeypatch.setattr(SamplingModel, 'sample', lambda *args, **kwargs: pytest.fail('sampled before checking'))
    for argv in (['--sigma-min', '100'], ['--guidance', '2'], ['--seeds', '0-3', '--fid']):
        assert _one_line_error(capsys, sample, ['--ckpt', str(paths['ckpt']), *argv]).startswith('--')


@pytest.mark.slow
def test_truncated_checkpoint_is_one_short_line(paths, tmp_path, capsys):
    truncated = tmp_path / 'truncated.ckpt'
    data = paths['ckpt'].read_bytes()
    truncated.write_bytes(data[:len(data) // 2])
    for script in (sample, metrics, plot_profile):
        err = _one_line_error(capsys, script, ['--ckpt', str(truncated)])
        assert err.startswith(f'{truncated}: cannot be read as a checkpoint') and len(err) - len(str(truncated)) < 60, err


@pytest.mark.slow
def test_help_and_flag_errors_import_neither_torch_nor_lightning(paths):
    """Answering --help or a bad flag is instant: no torch (seconds to import) and no Lightning (more)."""
    code = ('import sys, importlib\n'
            'script = importlib.import_module(sys.argv[1])\n'
            'try:\n    script.main(sys.argv[2:])\n'
            'except SystemExit as e:\n    print("exit", e.code, "torch" in sys.modules, "lightning" in sys.modules)\n')
    ckpt, file = str(paths['ckpt']), str(paths['file'])
    for script, argv, exit_code in (
            ('sample', ['--help'], 0), ('sample', ['--ckpt', ckpt, '--solver', 'rk9'], 2),
            ('sample', ['--ckpt', ckpt, '--num', '0'], 2), ('sample', ['--ckpt', ckpt, '--out', file], 2),
            ('sample', ['--ckpt', str(paths['run'])], 2), ('sample', ['--bogus'], 2),
            ('metrics', ['--help'], 0), ('metrics', ['--ckpt', ckpt, '--json', str(paths['dir'])], 2),
            ('fid', ['--help'], 0), ('fid', ['--images', file, '--ckpt', ckpt], 2),
            ('plot_profile', ['--help'], 0), ('plot_profile', ['--ckpt', ckpt, '--steps', '0'], 2),
            ('train', ['--help'], 0), ('train', ['--bogus'], 2)):
        result = subprocess.run([sys.executable, '-c', code, script, *argv], capture_output=True, text=True, timeout=120)
        assert result.stdout.splitlines()[-1] == f'exit {exit_code} False False', (script, argv, result.stderr)


def test_flag_names_match_the_registries():
    import sampling
    from evaluation import fidelity
    from entropy.profile import PROFILE_SCHEDULES
    from entropy.surrogate import SURROGATE_SCHEDULE
    assert cli.SOLVER_NAMES == tuple(sorted(sampling.SOLVERS))
    assert cli.SCHEDULE_NAMES == tuple(sampling.SCHEDULES)
    assert cli.PROFILE_SCHEDULE_NAMES == tuple(PROFILE_SCHEDULES)
    assert cli.SURROGATE_SCHEDULE_NAME == SURROGATE_SCHEDULE
    assert cli.OPTIMIZED_SCHEDULE_NAMES == sampling.OPTIMIZED_SCHEDULES
    assert cli.METRICS == fidelity.METRICS


@pytest.mark.slow
def test_edm_flag_names_and_progress_bar(paths, tmp_path, capsys):
    out = tmp_path / 'samples'
    sample.main(['--network', str(paths['ckpt']), '--outdir', str(out), '--num', '40', '--steps', '3'])
    assert (out / 'samples.npz').is_file()
    bar = capsys.readouterr().err.replace('\r', '\n').strip().splitlines()[-1]
    assert bar.startswith('sample: 100%') and '40/40' in bar and 'sample/s' in bar, bar
    sample.main(['--ckpt', str(paths['ckpt']), '--out', str(out), '--num', '40', '--steps', '3', '--quiet'])
    assert capsys.readouterr().err == ''


@pytest.mark.slow
def test_fid_names_classifier_numbers_for_the_classifier(tmp_path, capsys):
    from evaluation import fidelity
    from evaluation import plots
    from config import load_config
    from datasets import build_dataset
    data = build_dataset(load_config('configs/mnist/small.yaml').data)
    fidelity.train_classifier(data, fidelity.classifier_file(data, tmp_path / 'cache'), steps=20)
    images = tmp_path / 'images'
    for i, image in enumerate(data.images[:12].cpu()):
        plots.save_image(image, images / f'{i:06d}.png')
    argv = ['--images', str(images), '--config', 'configs/mnist/small.yaml', '--features', 'classifier',
            '--cache-dir', str(tmp_path / 'cache'), '--num-reference', '50', '--json', str(tmp_path / 'fid.json')]
    fid.main(argv)
    captured = capsys.readouterr()
    result = json.loads((tmp_path / 'fid.json').read_text())
    assert {'frechet_classifier_distance', 'kernel_classifier_distance_mean'} <= set(result)
    assert 'inception' not in captured.out + json.dumps(result)
    weights = fidelity.classifier_fingerprint(tmp_path / 'cache' / 'classifier-mnist-5k-32px.pt')
    assert captured.out.splitlines()[0] == (f'fid: 12 images in {images} against 50 mnist-5k training images, '
                                            f'digit classifier classifier-mnist-5k-32px.pt (weights {weights}) features')
    assert '12/12' in captured.err and 'img/s' in captured.err  # the progress bar
    fid.main(argv + ['--quiet'])
    assert capsys.readouterr().err == ''


def test_a_run_is_named_after_the_data_it_overrides(monkeypatch):
    import argparse
    monkeypatch.setenv('CEDM_RUN_DIR', 'unset at teardown')  # resolve_config sets it: monkeypatch restores the original
    monkeypatch.delenv('CEDM_RUN_DIR')
    config = train.resolve_config(argparse.Namespace(config=None, resume=None, restart=False, allow_change=None, overrides=['data.name=moons']))[0]
    assert config.name == 'moons' and config.run_dir.startswith('runs/moons-')
    monkeypatch.delenv('CEDM_RUN_DIR', raising=False)
    config = train.resolve_config(argparse.Namespace(config=None, resume=None, restart=False, allow_change=None, overrides=['name=mine', 'data.name=moons']))[0]
    assert config.name == 'mine'  # a name given wins


def test_train_help_points_to_every_config_key():
    help_text = subprocess.run([sys.executable, 'train.py', '--help'], capture_output=True, text=True, timeout=60).stdout
    assert 'docs/config-help.txt' in help_text and 'trainer.*' in help_text
