"""last.ckpt holds the newest state at the end of every run, whatever its shape: any max_steps and
ckpt_every, stopped by a signal before or between periodic checkpoints, resumed once or twice;
never a last-vN.ckpt; and a resumed run ends bit-identical to the uninterrupted one."""

import os
import signal

import pytest
import torch

import train
from files import link_atomically
from training.callbacks import Checkpoints

from .test_reliability import SMALL, _SendSignal, _with_callback, assert_same_training_state

pytestmark = pytest.mark.slow

# (max_steps, ckpt_every, steps at which a SIGTERM arrives: one stop, then one `--resume auto`, each)
RUN_SHAPES = [
    (25, 10, ()),        # max_steps not a multiple of ckpt_every
    (25, 40, ()),        # ckpt_every beyond max_steps: no periodic checkpoint at all
    (25, 10, (6,)),      # stopped before the first periodic checkpoint
    (25, 10, (13,)),     # stopped between periodic checkpoints
    (25, 10, (12, 17)),  # stopped twice: two resumes in a row
    (25, 10, (24,)),     # stopped by a signal in the last step: the resume has nothing left to do
]


def _checkpoints(run_dir):
    return sorted(p.name for p in (run_dir / 'checkpoints').glob('*.ckpt'))


def _step(run_dir, name='last.ckpt'):
    return torch.load(run_dir / 'checkpoints' / name, weights_only=True)['global_step']


def _periodic(ckpt_every, up_to):
    return [f'step-{s:07d}.ckpt' for s in range(ckpt_every, up_to + 1, ckpt_every)]


def _train(run_dir, monkeypatch, args, signal_at=None):
    """train.main in-process; with `signal_at`, a SIGTERM arrives during that step. Returns the exit code."""
    if signal_at is not None:
        build = train.build_trainer
        monkeypatch.setattr(train, 'build_trainer', lambda *args: _with_callback(
            build(*args), _SendSignal(signal.SIGTERM, signal_at)))
    try:
        train.main(args + [f'run_dir={run_dir}'])
        return 0
    except SystemExit as e:
        return e.code
    finally:
        monkeypatch.undo()


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
    """The uninterrupted run of each (max_steps, ckpt_every), trained once."""
    runs = {}

    def get(max_steps, ckpt_every):
        if (max_steps, ckpt_every) not in runs:
            run_dir = tmp_path_factory.mktemp('uninterrupted')
            train.main(SMALL + [f'trainer.max_steps={max_steps}', f'trainer.ckpt_every={ckpt_every}', f'run_dir={run_dir}'])
            runs[max_steps, ckpt_every] = run_dir
        return runs[max_steps, ckpt_every]
    return get


@pytest.mark.parametrize('max_steps, ckpt_every, stops', RUN_SHAPES)
def test_last_checkpoint_holds_the_final_state_of_every_run_shape(max_steps, ckpt_every, stops, uninterrupted,
                                                                  tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / 'run'
    args = SMALL + [f'trainer.max_steps={max_steps}', f'trainer.ckpt_every={ckpt_every}']
    for i, at in enumerate(stops):
        code = _train(run_dir, monkeypatch, (['--resume', 'auto'] if i else []) + args, signal_at=at)
        assert code == 128 + signal.SIGTERM
        stopped_at = at + 1  # the step in progress finishes
        assert f'stopped by SIGTERM at step {stopped_at}; checkpoint {run_dir}/checkpoints/last.ckpt' in capsys.readouterr().err
        assert _step(run_dir) == stopped_at
        assert _checkpoints(run_dir) == ['last.ckpt', *_periodic(ckpt_every, stopped_at)]
    assert _train(run_dir, monkeypatch, (['--resume', 'auto'] if stops else []) + args) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == f'cedm: done at step {max_steps}; checkpoint {run_dir}/checkpoints/last.ckpt'
    assert _step(run_dir) == max_steps
    assert _checkpoints(run_dir) == ['last.ckpt', *_periodic(ckpt_every, max_steps)]  # never a last-vN.ckpt
    reference = uninterrupted(max_steps, 10)  # when checkpoints are written does not change the training
    assert_same_training_state(torch.load(run_dir / 'checkpoints' / 'last.ckpt', weights_only=True),
                               torch.load(reference / 'checkpoints' / 'last.ckpt', weights_only=True))


def test_a_finished_run_resumed_again_says_done_and_a_max_steps_already_passed_is_one_line(uninterrupted, tmp_path, capsys):
    run_dir = uninterrupted(25, 10)
    before = (run_dir / 'checkpoints' / 'last.ckpt').stat().st_mtime_ns
    train.main(['--resume', 'auto', f'run_dir={run_dir}'])  # a requeued job, or the same command again
    assert capsys.readouterr().out.strip() == f'cedm: done at step 25; checkpoint {run_dir}/checkpoints/last.ckpt'
    assert (run_dir / 'checkpoints' / 'last.ckpt').stat().st_mtime_ns == before
    with pytest.raises(SystemExit) as info:  # an earlier checkpoint with max_steps at its step: nothing to train
        train.main(['--resume', str(run_dir / 'checkpoints' / 'step-0000020.ckpt'), 'trainer.max_steps=20',
                    f'run_dir={tmp_path / "b"}'])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and len(err.splitlines()) == 1
    assert 'trainer.max_steps: 20 is not beyond step 20 of' in err
    assert not (tmp_path / 'b').exists()


def test_the_default_ckpt_every_with_a_max_steps_it_does_not_divide(tmp_path):
    """The user's ordinary case: ckpt_every 1000 (the default), a run of 1300 steps, resumed from the
    periodic checkpoint to a longer max_steps."""
    args = [a for a in SMALL if not a.startswith(('noise.', 'trainer.log_every'))] + ['trainer.batch_size=16', 'trainer.log_every=100']
    train.main(args + ['trainer.max_steps=1300', f'run_dir={tmp_path / "a"}'])
    assert _step(tmp_path / 'a') == 1300 and _checkpoints(tmp_path / 'a') == ['last.ckpt', 'step-0001000.ckpt']
    train.main(['--resume', str(tmp_path / 'a' / 'checkpoints' / 'step-0001000.ckpt'), 'trainer.max_steps=1300',
                f'run_dir={tmp_path / "b"}'])
    assert_same_training_state(torch.load(tmp_path / 'a' / 'checkpoints' / 'last.ckpt', weights_only=True),
                               torch.load(tmp_path / 'b' / 'checkpoints' / 'last.ckpt', weights_only=True))


def test_last_is_the_periodic_file_itself_and_replacing_it_is_atomic(tmp_path):
    source, last = tmp_path / 'step-0000010.ckpt', tmp_path / 'last.ckpt'
    source.write_bytes(b'new state')
    last.write_bytes(b'old state')
    link_atomically(source, last)
    assert last.read_bytes() == b'new state' and os.path.samefile(source, last)  # one write, two names
    assert sorted(p.name for p in tmp_path.iterdir()) == ['last.ckpt', 'step-0000010.ckpt']  # no temporary left
    assert Checkpoints(tmp_path, 10).last == last
