"""Checkpoint files: atomic writes and checked reads.

A cedm checkpoint is a Lightning checkpoint with an extra 'cedm' entry holding the resolved
config, the EMA state and the random-generator states.
"""

import os
from pathlib import Path

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from .config import ConfigError, config_from_dict

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with a one-line message naming the file."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes to a temporary file in the same folder, syncs it, then renames it into place, so
    the checkpoint at `path` is always a complete file whenever the process dies."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f'.{path.name}.tmp{os.getpid()}')
        try:
            with open(tmp, 'wb') as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


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
    except Exception as e:  # torch raises many types for truncated or foreign files
        raise CheckpointError(f"{path}: cannot be read as a checkpoint (truncated or corrupt?): {first_line(e)}") from None
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
