"""σ schedules optimised for one model, solver and number of steps, from the model's own trajectories.

Teacher trajectories: `num_samples` initial noises solved accurately (Heun with `substeps` steps between
neighbouring nodes of a grid of σ log-spaced from σ_max to σ_min, then the step to 0), recorded at every
grid node. Every step the solver could take from one node to a lower one, started on the teacher's
state there, is scored by its local error, the distance from the teacher's state where it lands (RMS
per element, mean over the samples); dynamic programming finds the `num_steps` steps from σ_max to 0
with the least summed local error (GITS: Chen et al., "On the Trajectory Regularity of ODE-based
Diffusion Sampling", ICML 2024). DPM-Solver++(2M) extrapolates from the previous step's denoiser output,
so its local error depends on the previous node too and the programme runs over pairs of nodes. Cost:
the teacher, plus for Heun one denoiser call per pair of nodes (its correction); Euler and DPM-Solver++
steps reuse the teacher's denoiser outputs. The last step lands on 0 from whichever node is best.

Weighted by the entropy profile (`optimized-entropic`). A summed local error counts an error made at
large σ as much as one made near the data, but the flow contracts errors made at large σ: on a Gaussian
mode of scale c an error at σ reaches the endpoint scaled by c/sqrt(c² + σ²), and over the modes of
data whose mmse curve is mmse(σ), in d dimensions, by sqrt(mmse(σ)/(d σ²)) in RMS, the square root of
the entropy rate per dimension (I-MMSE). `entropy_weights` reads that factor off the training profile,
with no network calls, and the programme weighs each step's local error by it at the step's end.
Everything here is plain torch on the denoiser's device; errors are in data units.
"""

import math
import time
from dataclasses import dataclass

import torch

from .schedules import _check_num_steps, _check_range
from .solvers import dpmpp_2m_step, euler_step, heun, heun_step

# The schedules of this module (sample.py --schedule): plain GITS, and weighted by the entropy profile.
OPTIMIZED_SCHEDULES = ('optimized', 'optimized-entropic')
# The solvers whose steps the programme can score (stochastic solvers have no deterministic target).
OPTIMIZABLE_SOLVERS = ('euler', 'heun', 'dpmpp_2m')
GRID_SIZE = 40  # σ nodes from σ_max to σ_min (then 0): 0.27 in log σ apart over EDM's [0.002, 80]
SUBSTEPS = 2  # teacher Heun steps between neighbouring nodes: 157 NFE per trajectory on that grid
NUM_SAMPLES = 128  # teacher trajectories


@dataclass
class Teacher:
    """`grid` float64 [K + 1] (σ_max … σ_min, 0); `states` [K + 1, n, ...] the teacher's x at each node
    (at 0: its endpoint); `denoised` [K, n, ...] D(x; σ) at each node with σ > 0; `nfe` denoiser calls
    per trajectory; `seconds` wall time."""
    grid: torch.Tensor
    states: torch.Tensor
    denoised: torch.Tensor
    nfe: int
    seconds: float

    @property
    def num_samples(self):
        return self.states.shape[1]


def check_solver(solver):
    """ValueError unless the programme can score `solver`'s steps (OPTIMIZABLE_SOLVERS)."""
    if solver not in OPTIMIZABLE_SOLVERS:
        raise ValueError(f"solver: the optimised schedules know {', '.join(OPTIMIZABLE_SOLVERS)} (got {solver!r})")


def grid_sigmas(sigma_min, sigma_max, size=GRID_SIZE):
    """`size` σ log-spaced from sigma_max down to sigma_min, then 0: float64 [size + 1]."""
    _check_range(sigma_min, sigma_max)
    if not (isinstance(size, int) and size >= 2):
        raise ValueError(f'grid_size: must be an integer >= 2 (got {size!r})')
    log_sigma = torch.linspace(math.log(sigma_max), math.log(sigma_min), size, dtype=torch.float64)
    return torch.cat([log_sigma.exp(), torch.zeros(1, dtype=torch.float64)])


@torch.no_grad()
def teacher_trajectories(denoiser, noise, grid, substeps=SUBSTEPS):
    """The `Teacher` of `denoiser` from standard normal `noise` [n, ...] over `grid` (`grid_sigmas`):
    Heun with `substeps` log-spaced steps between neighbouring nodes with σ > 0, then the step to 0."""
    if not (isinstance(substeps, int) and substeps >= 1):
        raise ValueError(f'substeps: must be an integer >= 1 (got {substeps!r})')
    start = time.perf_counter()
    log_nodes = grid[:-1].log()
    fractions = torch.arange(substeps, dtype=torch.float64) / substeps
    fine = (log_nodes[:-1, None] + fractions * (log_nodes[1:] - log_nodes[:-1])[:, None]).reshape(-1)
    fine = torch.cat([fine.exp(), grid[-2:]])  # ..., σ_min, 0
    recorder = _NodeRecorder(substeps, noise * grid[0].item())
    heun(denoiser, recorder.states[0], fine, callback=recorder)
    return Teacher(grid, torch.stack(recorder.states), torch.stack(recorder.denoised), 2 * (len(fine) - 1) - 1,
                   time.perf_counter() - start)


class _NodeRecorder:
    """The teacher's x at every node (the start, then after each step that ends on a node, and the
    endpoint) and D at every node with σ > 0 (the first call of each step that starts on one)."""

    def __init__(self, substeps, start):
        self.substeps, self.states, self.denoised = substeps, [start], []

    def __call__(self, step):
        if step['i'] % self.substeps == 0:
            self.denoised.append(step['denoised'])
        if (step['i'] + 1) % self.substeps == 0 or step['sigma_next'] == 0:
            self.states.append(step['x'])


def _rms(a, b):
    """Mean over samples of the RMS per element of a − b."""
    return (a - b).double().square().flatten(1).mean(1).sqrt().mean().item()


@torch.no_grad()
def local_errors(denoiser, teacher, solver):
    """The local error (`_rms`) of each step the solver can take between grid nodes, started on the
    teacher's state: for euler and heun [K + 1, K + 1] with entry [i, j] the step from node i to node j
    (inf where j <= i); for dpmpp_2m [K + 2, K + 1, K + 1] with entry [h, i, j] the step from i to j
    after one from h (index K + 1 for h: no previous step). Also the denoiser calls spent per trajectory."""
    check_solver(solver)
    grid, states, den = teacher.grid.tolist(), teacher.states, teacher.denoised
    size = len(grid)
    nfe = 0
    if solver in ('euler', 'heun'):
        errors = torch.full((size, size), math.inf, dtype=torch.float64)
        for i in range(size - 1):
            for j in range(i + 1, size):
                if solver == 'euler':
                    x = euler_step(states[i], den[i], grid[i], grid[j])
                else:
                    x = heun_step(denoiser, states[i], den[i], grid[i], grid[j])
                    nfe += grid[j] > 0
                errors[i, j] = _rms(x, states[j])
        return errors, nfe
    errors = torch.full((size + 1, size, size), math.inf, dtype=torch.float64)
    for i in range(size - 1):
        for j in range(i + 1, size):
            errors[size, i, j] = _rms(dpmpp_2m_step(states[i], den[i], grid[i], grid[j]), states[j])
            for h in range(i):
                x = dpmpp_2m_step(states[i], den[i], grid[i], grid[j], den[h], grid[h])
                errors[h, i, j] = _rms(x, states[j])
    return errors, nfe


def best_path(errors, num_steps):
    """(the node indices 0 = n_0 < n_1 < … < n_num_steps = last node, their summed error) that minimise
    the sum of `errors` along the path, by dynamic programming. `errors`: [K, K] (one-step solvers) or
    [K + 1, K, K] with the previous node first (multistep; index K: none)."""
    multistep = errors.ndim == 3
    size = errors.shape[-1]
    if not 1 <= num_steps <= size - 1:
        raise ValueError(f'num_steps: the grid has room for 1 to {size - 1} steps (got {num_steps})')
    if not multistep:
        cost = torch.full((size,), math.inf, dtype=torch.float64)
        cost[0] = 0
        parents = []
        for _ in range(num_steps):  # cost[j]: the least error of a path of m steps from node 0 to node j
            total = cost[:, None] + errors
            cost, parent = total.min(0)
            parents.append(parent)
        path = [size - 1]
        for parent in reversed(parents):
            path.append(parent[path[-1]].item())
        return path[::-1], cost[-1].item()
    # State (i, j): the last step went from i to j. The first step has no previous node (index size).
    cost = errors[size, 0].clone()[None].expand(size, size).clone()  # [i, j]: only i = 0 is reachable
    cost[1:] = math.inf
    parents = []
    for _ in range(num_steps - 1):
        total = cost[:, :, None] + errors[:size]  # [h, i, j]
        cost, parent = total.min(0)  # over the previous node h
        parents.append(parent)
    last = cost[:, size - 1]
    i = last.argmin().item()
    path = [size - 1, i]
    for parent in reversed(parents):
        path.append(parent[path[-1], path[-2]].item())
    return path[::-1], last[i].item()


def entropy_weights(grid, sigma, mmse, dim):
    """The RMS factor sqrt(mmse(σ)/(dim σ²)), at most 1, by which an error made at each σ > 0 of `grid`
    reaches the endpoint on Gaussian data of that mmse curve (module docstring); 1 at σ = 0. `sigma`,
    `mmse`: a profile's curve (increasing σ), interpolated in log σ and held flat beyond its ends."""
    log_sigma, rate = torch.as_tensor(sigma, dtype=torch.float64).log(), torch.as_tensor(mmse, dtype=torch.float64)
    rate = rate / (dim * log_sigma.exp() ** 2)
    nodes = grid[:-1].log().clamp(log_sigma[0], log_sigma[-1])
    i = torch.searchsorted(log_sigma, nodes).clamp(1, len(log_sigma) - 1)
    t = (nodes - log_sigma[i - 1]) / (log_sigma[i] - log_sigma[i - 1])
    at_nodes = (rate[i - 1] + t * (rate[i] - rate[i - 1])).clamp(1e-12, 1).sqrt()  # > 0: never 0 × inf
    return torch.cat([at_nodes, torch.ones(1, dtype=torch.float64)])


def dp_schedule(errors, grid, num_steps, weights=None):
    """The `num_steps` steps on `grid` (float64 [num_steps + 1], ending in 0) with the least summed local
    error (`local_errors`), each weighted by `weights` [len(grid)] at the node where it lands
    (`entropy_weights`; None: unweighted, GITS)."""
    _check_num_steps(num_steps)
    if weights is not None:
        errors = errors * weights
    path, _ = best_path(errors, num_steps)
    return grid[path]
