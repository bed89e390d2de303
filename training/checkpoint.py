"""Checkpoint files: when they are written, atomic writes and checked reads.

A cedm checkpoint is a Lightning checkpoint with an extra 'cedm' entry holding the resolved
config, the EMA state and the random-generator states.
"""

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from errors import CheckpointError, ConfigError
from files import link_atomically, save_atomically

from .config import config_from_dict

FORMAT_VERSION = 1


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
    the checkpoint at `path` is always a complete file whenever the process dies."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        save_atomically(checkpoint, path)


def remove_stale_temporaries(folder):
    """Delete the temporary files of writes that a killed process left unfinished in `folder`."""
    for path in Path(folder).glob('.*.ckpt.tmp*'):
        path.unlink(missing_ok=True)


def first_line(error, limit=200):
    """An exception's message cut to one line (its type when it has none), for one-line errors."""
    text = str(error).strip()
    return text.splitlines()[0][:limit] if text else type(error).__name__


def read_checkpoint(path):
    """Load a cedm checkpoint on the CPU; returns (checkpoint dict, validated Config)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    except Exception:  # torch raises many types, with long texts, for truncated or foreign files
        raise CheckpointError(f"{path}: cannot be read as a checkpoint (truncated or corrupt)") from None
    if not isinstance(checkpoint, dict) or 'cedm' not in checkpoint:
        raise CheckpointError(f"{path}: not a cedm checkpoint (no 'cedm' entry)")
    meta = checkpoint['cedm']
    if meta.get('format') != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {meta.get('format')!r} is not supported (expected {FORMAT_VERSION})")
    try:
        config = config_from_dict(meta['config'])
    except ConfigError as e:
        raise CheckpointError(f"{path}: its stored config no longer validates: {e}") from None
    return checkpoint, config
