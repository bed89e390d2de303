"""Never lose a run: a run folder that holds a run is refused (or, with --restart, moved aside), a resume
that would change what the run trains is refused in one line naming the keys (or, allowed, recorded),
a checkpoint that does not fit names its parameter, and the training bar counts steps of the run."""

import os
import subprocess
import sys

import pytest
import torch
import yaml

import train
from training import callbacks
from config import TrainerConfig, resumable

SMALL = ['trainer.batch_size=64', 'trainer.log_every=5', 'trainer.plot_every=100000', 'trainer.progress_bar=false',
         'sample.num=50', 'ema.update_after_step=5']


def _files(run_dir):
    """{relative path: (size, mtime)} of every file of a run folder."""
    return {str(p.relative_to(run_dir)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(run_dir.rglob('*')) if p.is_file()}


def _step(run_dir):
    return torch.load(run_dir / 'checkpoints' / 'last.ckpt', weights_only=True)['global_step']


def _error(argv, capsys):
    """The one line train.py prints for `argv`, which must exit with code 2."""
    with pytest.raises(SystemExit) as stop:
        train.main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.fixture
def ring_run(tmp_path):
    """A ring run stopped at step 25 with ckpt_every 10 (periodic files at 10 and 20, last.ckpt at 25)."""
    run_dir = tmp_path / 'ring'
    train.main(SMALL + ['trainer.max_steps=25', 'trainer.ckpt_every=10', f'run_dir={run_dir}'])
    return run_dir


def test_a_run_folder_is_not_restarted_by_the_same_command_again(ring_run, capsys):
    before = _files(ring_run)
    err = _error(SMALL + ['trainer.max_steps=30', f'run_dir={ring_run}'], capsys)
    assert f'run_dir: {ring_run} already holds a run' in err
    assert f'--resume auto run_dir={ring_run}' in err and '--restart' in err
    assert _files(ring_run) == before  # every checkpoint, the config and the logs untouched


def test_restart_moves_the_old_run_aside_and_starts_at_step_zero(ring_run, capsys):
    before = _files(ring_run)
    train.main(SMALL + ['--restart', 'trainer.max_steps=12', 'trainer.ckpt_every=10', f'run_dir={ring_run}'])
    out = capsys.readouterr().out
    (moved,) = ring_run.parent.glob('ring-replaced-*')
    assert f'moved the run in {ring_run} to {moved}' in out
    assert _files(moved) == before  # the old run whole, in its new place
    assert _step(ring_run) == 12
    assert sorted(p.name for p in (ring_run / 'checkpoints').glob('*.ckpt')) == ['last.ckpt', 'step-0000010.ckpt']
    with pytest.raises(SystemExit):
        train.main(['--restart', '--resume', 'auto', f'run_dir={ring_run}'])
    assert '--restart and --resume: give one' in capsys.readouterr().err


def test_an_empty_folder_and_a_run_that_died_before_its_first_checkpoint_are_usable(tmp_path, ring_run):
    empty = tmp_path / 'empty'
    empty.mkdir()
    train.main(SMALL + ['trainer.max_steps=3', f'run_dir={empty}'])
    assert _step(empty) == 3
    died = tmp_path / 'died'  # config.yaml and logs written, no checkpoint yet: a requeued job starts it again
    died.mkdir()
    (died / 'config.yaml').write_text((ring_run / 'config.yaml').read_text())
    train.main(SMALL + ['--resume', 'auto', 'trainer.max_steps=3', f'run_dir={died}'])
    assert _step(died) == 3


def test_resume_auto_without_last_ckpt_names_the_checkpoint_to_continue_from(ring_run, capsys):
    (ring_run / 'checkpoints' / 'last.ckpt').unlink()
    err = _error(['--resume', 'auto', f'run_dir={ring_run}'], capsys)
    assert f"--resume {ring_run / 'checkpoints' / 'step-0000020.ckpt'}" in err


def test_resuming_into_another_runs_folder_is_refused(ring_run, tmp_path, capsys):
    other = tmp_path / 'other'
    train.main(SMALL + ['trainer.max_steps=3', f'run_dir={other}'])
    before = _files(other)
    err = _error(['--resume', str(ring_run / 'checkpoints' / 'step-0000020.ckpt'), f'run_dir={other}'], capsys)
    assert f'run_dir: {other} already holds a run' in err
    assert _files(other) == before


@pytest.mark.parametrize('argv, key, old, new', [
    (['data.name=moons'], 'data.name', 'ring', 'moons'),
    (['--config', 'configs/toy/tree.yaml'], 'data.name', 'ring', 'tree'),
    (['network.width=64'], 'network.width', 128, 64),
    (['trainer.batch_size=32'], 'trainer.batch_size', 64, 32),
])
def test_a_resume_that_changes_what_the_run_trains_is_one_line(ring_run, capsys, argv, key, old, new):
    before = _files(ring_run)
    err = _error(['--resume', 'auto', f'run_dir={ring_run}', 'trainer.max_steps=30', *argv], capsys)
    assert f"would change the run's {key}: {old!r} -> {new!r}" in err and f'--allow-change {key}' in err
    assert _files(ring_run) == before  # config.yaml not rewritten, nothing trained


def test_an_allowed_change_is_recorded_and_a_misfit_checkpoint_names_its_parameter(ring_run, capsys):
    err = _error(['--resume', 'auto', f'run_dir={ring_run}', 'trainer.max_steps=30', 'network.width=64',
                  '--allow-change', 'network.width'], capsys)
    assert 'has shape [128, ' in err and 'in the checkpoint, [64, ' in err and 'version' not in err
    train.main(['--resume', 'auto', f'run_dir={ring_run}', 'trainer.max_steps=30', 'optim.lr=0.0005',
                '--allow-change', 'optim.lr'])
    assert "optim.lr: 0.001 -> 0.0005 (--allow-change; recorded in" in capsys.readouterr().out
    (entry,) = yaml.safe_load((ring_run / 'resume-changes.yaml').read_text())
    assert entry['step'] == 25 and entry['changes'] == {'optim.lr': {'old': 0.001, 'new': 0.0005}}
    assert yaml.safe_load((ring_run / 'config.yaml').read_text())['optim']['lr'] == 0.0005
    assert _step(ring_run) == 30


def test_what_a_resume_may_change(ring_run):
    assert all(resumable(k) for k in ('trainer.max_steps', 'trainer.ckpt_every', 'trainer.devices', 'trainer.batch_gpu',
                                      'trainer.log_every', 'sample.steps', 'data.root', 'run_dir', 'name'))
    assert not any(resumable(k) for k in ('trainer.batch_size', 'data.name', 'data.scale', 'network.width',
                                          'precond.sigma_data', 'noise.P_mean', 'optim.lr', 'ema.beta', 'seed'))
    # A run resumed with new cadences and a longer budget continues as before.
    train.main(['--resume', 'auto', f'run_dir={ring_run}', 'trainer.max_steps=31', 'trainer.ckpt_every=7',
                'trainer.log_every=3'])
    assert _step(ring_run) == 31 and (ring_run / 'checkpoints' / 'step-0000028.ckpt').is_file()


def test_resume_given_a_run_folder_names_its_last_checkpoint(ring_run, capsys):
    err = _error(['--resume', str(ring_run)], capsys)
    assert err.endswith(f"--resume: {ring_run} is a folder (use --resume {ring_run / 'checkpoints' / 'last.ckpt'})")


def test_the_training_bar_counts_the_runs_steps_one_by_one_after_a_resume(tmp_path, capfd, monkeypatch):
    class EveryUpdate(callbacks.Tqdm):  # draws every update (tqdm's default: ten a second), so the test sees each step
        def __init__(self, *args, **kwargs):
            super().__init__(*args, mininterval=0, miniters=1, **kwargs)

    monkeypatch.setattr(callbacks, 'Tqdm', EveryUpdate)
    args = [a for a in SMALL if 'progress_bar' not in a] + ['trainer.log_every=1000', f'run_dir={tmp_path}']
    train.main(args + ['trainer.max_steps=10'])
    capfd.readouterr()
    train.main(['--resume', 'auto', *args, 'trainer.max_steps=16'])
    drawn = [line.split('|')[-1].split()[0] for line in capfd.readouterr().out.replace('\r', '\n').splitlines()
             if line.startswith('train:')]
    assert [f'{n}/16' for n in range(10, 17)] == sorted(set(drawn), key=lambda s: int(s.split('/')[0]))


def test_config_errors_print_on_the_first_process_only_and_every_process_exits_2(tmp_path):
    def run(rank):
        env = {**os.environ, 'RANK': str(rank), 'LOCAL_RANK': str(rank), 'WORLD_SIZE': '2'}
        return subprocess.run([sys.executable, 'train.py', 'trainer.max_stepz=3', f'run_dir={tmp_path}'],
                              capture_output=True, text=True, env=env, timeout=120)
    first, second = run(0), run(1)
    assert first.returncode == second.returncode == 2
    assert first.stderr.strip() == "train.py: error: trainer.max_stepz: unknown key (did you mean 'trainer.max_steps'?)"
    assert second.stderr == ''


def test_more_cpu_processes_than_cores_are_warned_about(capsys, monkeypatch):
    monkeypatch.setattr(os, 'sched_getaffinity', lambda pid: {0, 1})
    train.check_accelerator(TrainerConfig(accelerator='cpu', devices=4))
    assert "trainer.devices=4 starts 4 training processes on this machine's 2 CPU cores" in capsys.readouterr().err
    train.check_accelerator(TrainerConfig(accelerator='cpu', devices=2))
    assert capsys.readouterr().err == ''
