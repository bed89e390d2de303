"""Sampling: σ discretisations (`schedules.py`), ODE/SDE solvers (`solvers.py`) and schedules optimised
for one model from its trajectories (`optimized.py`), plain torch.

    sigmas = get_sigmas('karras', 18)                      # float64 [19], ends in 0
    x = sample(denoiser, torch.randn(n, d), sigmas, 'heun')  # 35 denoiser calls
"""

import torch

from .guidance import guided
from .optimized import OPTIMIZABLE_SOLVERS, OPTIMIZED_SCHEDULES
from .schedules import SCHEDULES, karras_sigmas, loglinear_sigmas, vp_sigmas
from .seeds import SeedGenerator, parse_seeds
from .solvers import SOLVERS, ddim, dpmpp_2m, euler, euler_ancestral, heun

__all__ = ['OPTIMIZABLE_SOLVERS', 'OPTIMIZED_SCHEDULES', 'SCHEDULES', 'SOLVERS', 'SeedGenerator', 'ddim', 'dpmpp_2m', 'euler', 'euler_ancestral', 'get_sigmas',
           'get_solver', 'guided', 'heun', 'karras_sigmas', 'loglinear_sigmas', 'parse_seeds', 'sample', 'vp_sigmas']


def _lookup(kind, table, name):
    if name not in table:
        raise ValueError(f"unknown {kind} {name!r}; choose from {', '.join(table)}")
    return table[name]


def get_sigmas(name, num_steps, **kwargs):
    """The named schedule of `SCHEDULES` with `num_steps` steps (float64 [num_steps + 1], ending in 0)."""
    return _lookup('schedule', SCHEDULES, name)(num_steps, **kwargs)


def get_solver(solver):
    """A solver of `SOLVERS` by name; a callable is returned as it is."""
    return solver if callable(solver) else _lookup('solver', SOLVERS, solver)


def sample(denoiser, noise, sigmas, solver='heun', *, generator=None, callback=None, **options):
    """Samples [n, ...] from standard normal `noise` [n, ...]: scale it to sigmas[0] and run `solver`
    (a name in `SOLVERS` or a function with the solver signature); `options` go to the solver."""
    solve = get_solver(solver)
    sigmas = torch.as_tensor(sigmas)
    return solve(denoiser, noise * sigmas[0].item(), sigmas, generator=generator, callback=callback, **options)
