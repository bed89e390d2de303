"""Checkpoint files: their format and checked reads (no Lightning, nothing from training/: sampling reads
them too; the Lightning side, when they are written and how, is `training.callbacks`).

A cedm checkpoint is a Lightning checkpoint with an extra 'cedm' entry holding the resolved
config, the EMA state and the random-generator states.
"""

import hashlib
from pathlib import Path

import torch

from config import config_from_dict
from errors import CheckpointError, ConfigError

FORMAT_VERSION = 1


def remove_stale_temporaries(folder):
    """Delete the temporary files of writes that a killed process left unfinished in `folder`."""
    for path in Path(folder).glob('.*.ckpt.tmp*'):
        path.unlink(missing_ok=True)


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


def state_dict_mismatch(expected, stored):
    """The first difference of names or shapes between the state dict a model expects and one a checkpoint
    stores, as a phrase naming the parameter (and how many more differ); None when they fit."""
    def shape(tensor):
        return list(tensor.shape)
    problems = [f'{name} has shape {shape(stored[name])} in the checkpoint, {shape(value)} in the model'
                for name, value in expected.items() if name in stored and stored[name].shape != value.shape]
    problems += [f'{name} is missing from the checkpoint' for name in expected if name not in stored]
    problems += [f'{name} is in the checkpoint but not in the model' for name in stored if name not in expected]
    if not problems:
        return None
    return problems[0] + (f' (and {len(problems) - 1} more parameters differ)' if len(problems) > 1 else '')


def weights_fingerprint(state_dict):
    """The first 16 hex digits of the SHA-256 of a state dict's tensors in key order: what tells two
    networks' weights apart (two torch.save files of equal weights differ in a random serialization id)."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        digest.update(key.encode())
        digest.update(state_dict[key].detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]
