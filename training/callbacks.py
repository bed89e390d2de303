"""train.py's Lightning callbacks and plugin: when checkpoints are written (`Checkpoints`) and how
(`AtomicCheckpointIO`), and the progress bar. (Signals: `training.shutdown`.)"""

import sys
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from lightning.pytorch.plugins.io import TorchCheckpointIO

from files import link_atomically, save_atomically


class Checkpoints(L.Callback):
    """`step-NNNNNNN.ckpt` every `every` optimizer steps, and `last.ckpt`: the newest state at each of
    those steps and at the end of every run, however it ends (`max_steps`, a signal, a stop for
    non-finite losses: each sets `trainer.should_stop`, so the run ends through `on_train_end`).
    Of the periodic files, the newest `keep_last` and those at multiples of `keep_every` steps stay
    (`prune`); rank 0 prints at the start what the run's files will take at most (`disk_use`).

    `last.ckpt` is a hard link to the periodic file of the same step when there is one (a copy on file
    systems without links), so each state is serialised once. Every rank calls `save_checkpoint` (the
    module's `on_save_checkpoint` gathers the ranks' states), at the same steps; rank 0 writes."""

    def __init__(self, folder, every, keep_last=None, keep_every=None):
        self.folder, self.every, self.keep_last, self.keep_every = Path(folder), every, keep_last, keep_every
        self.start_step = None  # the step training (re)started from: its periodic file exists or is not due
        self.saved_step = None  # the step of the newest state this run wrote to last.ckpt

    @property
    def last(self):
        return self.folder / 'last.ckpt'

    def on_train_start(self, trainer, pl_module):
        self.start_step = trainer.global_step
        if trainer.is_global_zero:
            num_params = sum(p.numel() for p in pl_module.denoiser.parameters())
            print(f'cedm: disk: {disk_use_line(pl_module.config, num_params)}')

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step  # a batch skipped for a non-finite loss uses up its step too
        if step % self.every == 0 and step not in (self.start_step, self.saved_step):
            path = self.folder / f'step-{step:07d}.ckpt'
            trainer.save_checkpoint(path, weights_only=False)
            if trainer.is_global_zero:
                link_atomically(path, self.last)
                self.prune(step)
            self.saved_step = step

    def on_train_end(self, trainer, pl_module):
        if trainer.global_step != self.saved_step:
            trainer.save_checkpoint(self.last, weights_only=False)
            self.saved_step = trainer.global_step

    def prune(self, step):
        """Delete the periodic files up to `step` (just written, and linked as last.ckpt) that retention lets
        go. Files beyond `step` (from a run resumed from an earlier checkpoint into its own folder) are left:
        this run writes over them when it gets there."""
        periodic = sorted((int(path.stem.split('-')[1]), path) for path in self.folder.glob('step-*.ckpt'))
        kept = kept_steps([s for s, _ in periodic if s <= step], self.keep_last, self.keep_every)
        for s, path in periodic:
            if s <= step and s not in kept:
                path.unlink(missing_ok=True)


def kept_steps(steps, keep_last, keep_every):
    """The periodic checkpoint steps of `steps` (ascending) that retention keeps: the newest `keep_last` (None:
    all) and the multiples of `keep_every` (None: none)."""
    return set(steps[-keep_last:] if keep_last else steps) | {s for s in steps if keep_every and s % keep_every == 0}


def disk_use(config, num_params):
    """(bytes of one checkpoint, checkpoint files kept at the end of the run, bytes of all post-hoc EMA
    snapshots) of a run from step 0 of `config`, for a network of `num_params` parameters. A checkpoint
    holds them in float32 as the raw weights, the EMA, Adam's two moments, and the post-hoc EMAs when
    kept; a snapshot holds one post-hoc EMA in float16. Everything else in the files is small."""
    t, e = config.trainer, config.ema
    posthoc = len(e.posthoc_sigma_rels) if e.posthoc else 0
    periodic = list(range(t.ckpt_every, t.max_steps + 1, t.ckpt_every))
    files = len(kept_steps(periodic, t.keep_last, t.keep_every)) + (t.max_steps % t.ckpt_every != 0)  # + last.ckpt alone
    return 4 * num_params * (4 + posthoc), files, 2 * num_params * posthoc * (t.max_steps // e.snapshot_every)


def disk_use_line(config, num_params):
    """`disk_use` in words, e.g. 'at most 2.68 GB: 3 checkpoint file(s) of 892 MB (trainer.keep_last 3, keep_every null)'."""
    checkpoint, files, snapshots = disk_use(config, num_params)
    t = config.trainer
    text = (f'at most {_size(checkpoint * files + snapshots)}: {files} checkpoint file(s) of {_size(checkpoint)} '
            f'(trainer.keep_last {t.keep_last}, keep_every {t.keep_every if t.keep_every else "null"})')
    return text + (f' + {_size(snapshots)} of post-hoc EMA snapshots' if snapshots else '')


def _size(num_bytes):
    return f'{num_bytes / 1e9:.3g} GB' if num_bytes >= 1e9 else f'{num_bytes / 1e6:.3g} MB'


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes to a temporary file in the same folder, syncs it, then renames it into place, so
    the checkpoint at `path` is always a complete file whenever the process dies. `preloaded`
    {path: contents}: checkpoints already read (and checked) by train.py, not read again on resume."""

    def __init__(self, preloaded=None):
        super().__init__()
        self.preloaded = dict(preloaded or {})

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        save_atomically(checkpoint, path)

    def load_checkpoint(self, path, *args, **kwargs):
        if str(path) in self.preloaded:
            return self.preloaded.pop(str(path))
        return super().load_checkpoint(path, *args, **kwargs)


class ProgressBar(TQDMProgressBar):
    """Lightning's progress bar over the run's optimizer steps, `global_step` of `max_steps` (after a resume
    too; Lightning's counts the batches of each epoch), moved every step (tqdm redraws at most ten times a
    second), with the loss the module last logged (it writes its scalars to the loggers itself, not
    through `self.log`, which is where Lightning's bar looks)."""

    def __init__(self):
        super().__init__(refresh_rate=1)
        self._shown = None  # the module's progress_metrics last put on the bar

    def get_metrics(self, trainer, pl_module):
        return {**super().get_metrics(trainer, pl_module), **pl_module.progress_metrics}

    def init_train_tqdm(self):
        return Tqdm(desc='train', initial=self.trainer.global_step, total=self.trainer.max_steps,
                    position=2 * self.process_position, disable=self.is_disabled, leave=True, dynamic_ncols=True,
                    file=sys.stdout, smoothing=0, bar_format=self.BAR_FORMAT)

    def on_train_epoch_start(self, trainer, *_):
        pass  # one bar for the whole run, not one per epoch

    def on_train_epoch_end(self, trainer, pl_module):
        pass

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        bar = self.train_progress_bar
        if bar.disable:
            return
        if pl_module.progress_metrics is not self._shown:  # a new dict at logging steps only: no host sync
            self._shown = pl_module.progress_metrics
            bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
        bar.update(trainer.global_step - bar.n)
