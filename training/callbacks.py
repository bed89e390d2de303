"""train.py's Lightning callbacks and plugin: when checkpoints are written (`Checkpoints`) and how
(`AtomicCheckpointIO`), and the progress bar. (Signals: `training.shutdown`.)"""

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.plugins.io import TorchCheckpointIO

from files import link_atomically, save_atomically


class Checkpoints(L.Callback):
    """`step-NNNNNNN.ckpt` every `every` optimizer steps, and `last.ckpt`: the newest state at each of
    those steps and at the end of every run, however it ends (`max_steps`, a signal, a stop for
    non-finite losses: each sets `trainer.should_stop`, so the run ends through `on_train_end`).

    `last.ckpt` is a hard link to the periodic file of the same step when there is one (a copy on file
    systems without links), so each state is serialised once. Every rank calls `save_checkpoint` (the
    module's `on_save_checkpoint` gathers the ranks' states), at the same steps; rank 0 writes."""

    def __init__(self, folder, every):
        self.folder, self.every = Path(folder), every
        self.start_step = None  # the step training (re)started from: its periodic file exists or is not due
        self.saved_step = None  # the step of the newest state this run wrote to last.ckpt

    @property
    def last(self):
        return self.folder / 'last.ckpt'

    def on_train_start(self, trainer, pl_module):
        self.start_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step  # unchanged by a batch skipped for a non-finite loss
        if step % self.every == 0 and step not in (self.start_step, self.saved_step):
            path = self.folder / f'step-{step:07d}.ckpt'
            trainer.save_checkpoint(path, weights_only=False)
            if trainer.is_global_zero:
                link_atomically(path, self.last)
            self.saved_step = step

    def on_train_end(self, trainer, pl_module):
        if trainer.global_step != self.saved_step:
            trainer.save_checkpoint(self.last, weights_only=False)
            self.saved_step = trainer.global_step


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
    """Lightning's progress bar, with the loss the module last logged (it writes its scalars to the
    loggers itself, not through `self.log`, which is where Lightning's bar looks)."""

    def get_metrics(self, trainer, pl_module):
        return {**super().get_metrics(trainer, pl_module), **pl_module.progress_metrics}
