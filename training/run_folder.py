"""A run folder's safety: a new run never writes into a folder that holds another (train.py refuses, or with
--restart moves the old run aside first), and the config changes a resume was allowed to make are
recorded in the run (no torch here: these checks run before anything heavy loads)."""

import os
import time
from pathlib import Path

import yaml

from errors import UsageError

# What a run writes into its folder (train.py, training.callbacks, the post-hoc EMA): any of them means a run is there.
RUN_ENTRIES = ('config.yaml', 'checkpoints', 'tensorboard', 'posthoc-ema')
RESUME_CHANGES = 'resume-changes.yaml'


def run_entries(run_dir):
    """The entries of RUN_ENTRIES that `run_dir` holds (an empty folder of checkpoints counts as none)."""
    run_dir = Path(run_dir)
    return [name for name in RUN_ENTRIES if (run_dir / name).is_file() or any((run_dir / name).glob('*'))]


def checkpoint_files(run_dir):
    return sorted((Path(run_dir) / 'checkpoints').glob('*.ckpt'))


def check_run_folder(run_dir, resume, auto, restart):
    """UsageError unless training may write into `run_dir`: a folder holding no run, or the run that `resume`
    (a checkpoint, or None for a fresh start) continues. `auto`: --resume auto found no last.ckpt, so
    a run that died before its first checkpoint starts again; `restart`: the caller moves the old run
    aside (`move_aside`). Call it in the first process only: the others start after it has written."""
    entries = run_entries(run_dir)
    if not entries or restart:
        return
    if resume is not None and Path(resume).resolve().parent.parent == Path(run_dir).resolve():
        return  # a checkpoint of this run: continuing it
    checkpoints = checkpoint_files(run_dir)
    if auto and not checkpoints:
        return  # nothing to lose: the run stopped before its first checkpoint
    held = ', '.join(f'{name}/' if (Path(run_dir) / name).is_dir() else name for name in entries)
    if auto:  # checkpoints but no last.ckpt: which one to continue from is the user's choice
        how = f'continue from one of its checkpoints with --resume {checkpoints[-1]}'
    else:
        how = f'continue it with --resume auto run_dir={run_dir}'
    raise UsageError(f'run_dir: {run_dir} already holds a run ({held}); {how}, give a new run_dir, '
                     'or start over with --restart (moves the old run aside)')


def move_aside(run_dir):
    """Rename the run in `run_dir` to `<run_dir>-replaced-<time>` (nothing is deleted); returns the new path."""
    run_dir = Path(run_dir)
    stamp = time.strftime('%Y%m%d-%H%M%S')
    target, n = run_dir.with_name(f'{run_dir.name}-replaced-{stamp}'), 1
    while target.exists():
        n += 1
        target = run_dir.with_name(f'{run_dir.name}-replaced-{stamp}-{n}')
    os.rename(run_dir, target)
    return target


def record_resume_changes(run_dir, step, resume, changes):
    """Append the not-resumable keys a resume was allowed to change (`--allow-change`) to RUN/resume-changes.yaml."""
    path = Path(run_dir) / RESUME_CHANGES
    entry = {'step': step, 'resume': str(resume), 'time': time.strftime('%Y-%m-%d %H:%M:%S'),
             'changes': {key: {'old': old, 'new': new} for key, old, new in changes}}
    with open(path, 'a') as f:
        f.write(yaml.safe_dump([entry], sort_keys=False))
    return path
