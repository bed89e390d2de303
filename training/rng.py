"""Random streams: per-rank generators derived from the run seed, and the process-wide states a
checkpoint carries so that a resumed run draws exactly what an uninterrupted one would have."""

import random

import numpy as np
import torch


def _seed(key):
    return int(np.random.SeedSequence(list(key)).generate_state(1, np.uint64)[0] >> 1)


def generator(device, *key):
    """A torch generator on `device` seeded from `key` (seed, rank, stream, ...) through numpy's SeedSequence."""
    return torch.Generator(device=device).manual_seed(_seed(key))


def seed_global(*key):
    """Seed the process-wide streams (torch on every device, numpy, Python) from `key`, as `generator` seeds one."""
    seed = _seed(key)
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def global_state():
    """The process-wide random states: torch (CPU and every CUDA device), numpy and Python. Only tensors
    and plain Python values, so a checkpoint holding them loads with `torch.load(weights_only=True)`."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {'torch': torch.get_rng_state(),
            'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            'numpy': (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached),
            'python': random.getstate()}


def set_global_state(state):
    """Restore what `global_state` returned. CUDA states are restored for the devices both runs have."""
    torch.set_rng_state(state['torch'])
    if torch.cuda.is_available():
        for index, cuda_state in enumerate(state['cuda'][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)
    kind, keys, position, has_gauss, cached = state['numpy']
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    random.setstate(state['python'])
