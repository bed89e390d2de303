"""Checkpoint files: their format and checked reads (no Lightning: sampling reads them too; the
Lightning side, when they are written and how, is `training.callbacks`).

A cedm checkpoint is a Lightning checkpoint with an extra 'cedm' entry holding the resolved
config, the EMA state and the random-generator states.
"""

from pathlib import Path

import torch

from errors import CheckpointError, ConfigError

from .config import config_from_dict

FORMAT_VERSION = 1


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
