"""The `surrogate` sampling schedule: the σ steps that minimise a solver's error on the Gaussian whose
mmse curve matches the entropy profile.

Why a surrogate. A Gaussian mode of scale c (x0 ~ N(0, c²)) has mmse(σ) = c²σ²/(c² + σ²), an exact
denoiser D(x; σ) = c²x/(c² + σ²) and an exact probability-flow solution x(σ) = z·sqrt(c² + σ²), so
any solver's endpoint error on it is computable in closed form for any schedule. Every profile is
fitted (non-negative least squares, relative error) by a sum of such modes over a log grid of scales:
mmse(σ) ≈ Σ_k w_k c_k²σ²/(c_k² + σ²), w_k ≥ 0 dimensions at scale c_k. The schedule is the one that
minimises the solver's expected squared endpoint error E‖x̂(0) − x(0)‖² = Σ_k w_k (x̂_k − c_k)² on that
surrogate (z = 1 per mode: the error is linear in z and E z² = 1), with σ_max and σ_min fixed.

Why not entropic time directly. On images the entropy rate mmse/σ² is near d nats per log σ at every
small σ, so uniform entropic time puts nearly every step at tiny σ; rescaled entropic time (density
mmse/σ per log σ) is Euler's optimum for a single Gaussian mode but too coarse at small σ for second-
order solvers. The surrogate's optimum depends on the solver and the number of steps, as it must.
What the surrogate ignores: the data's non-Gaussian structure beyond its mmse curve, and that a real
denoiser is not linear; whether its optimum transfers to a trained model is measured, not assumed
(benchmarks/image_sampling.py).
"""

import math

import numpy as np
import torch
from scipy.optimize import minimize, nnls

from sampling import SOLVERS, karras_sigmas, loglinear_sigmas

# The schedule's name (sample.py --schedule, sample.schedule).
SURROGATE_SCHEDULE = 'surrogate'
# Solvers the surrogate is solved for; stochastic ones use the deterministic solver of the same order
# (Euler-ancestral and DDIM are first order, like Euler).
SURROGATE_SOLVERS = {'euler': 'euler', 'heun': 'heun', 'dpmpp_2m': 'dpmpp_2m', 'euler_ancestral': 'euler',
                     'ddim': 'euler'}
# Scales of the surrogate's modes: log-spaced from e³ below the profile's σ_min (modes finer than any
# σ it measured: flat mmse) up to its σ_max, NUM_SCALES of them.
NUM_SCALES = 96
SCALE_MARGIN = 3.0
# The optimiser's iteration cap (L-BFGS-B on the log σ gaps, from the better of ρ = 7 and log-linear).
MAX_ITERATIONS = 200
LOG_GAP_BOUND = 10.0  # |log| of each step's unnormalised share of the log σ span: shares stay within e^±20 of each other


def fit_modes(sigma, mmse, sigma_min, sigma_max):
    """(scales c [K], weights w [K] >= 0), float64 tensors, of the Gaussian modes whose summed mmse best
    matches `mmse` at `sigma` (relative least squares); modes of weight 0 dropped."""
    sigma = np.asarray(sigma, dtype=np.float64)
    mmse = np.asarray(mmse, dtype=np.float64)
    if not (np.isfinite(mmse).all() and (mmse > 0).all()):
        raise ValueError('surrogate: the profile is uninitialised or has a non-positive mmse')
    scales = np.exp(np.linspace(math.log(sigma_min) - SCALE_MARGIN, math.log(sigma_max), NUM_SCALES))
    curves = scales ** 2 * sigma[:, None] ** 2 / (scales ** 2 + sigma[:, None] ** 2)
    weights, _ = nnls(curves / mmse[:, None], np.ones_like(mmse))
    keep = weights > 0
    return torch.from_numpy(scales[keep]), torch.from_numpy(weights[keep])


def surrogate_error(sigmas, solver, scales, weights):
    """E‖x̂(0) − x(0)‖² of `solver` (a name in SOLVERS) run over `sigmas` (decreasing, ending in 0) on
    the Gaussian modes (`fit_modes`): in data units squared, summed over the modes' dimensions."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    scales = torch.as_tensor(scales, dtype=torch.float64)
    variance = scales ** 2

    def denoiser(x, sigma):
        return x * variance / (variance + sigma[:, None] ** 2)

    start = (variance + sigmas[0] ** 2).sqrt()[None]
    end = SOLVERS[solver](denoiser, start, sigmas)[0]
    return float((torch.as_tensor(weights, dtype=torch.float64) * (end - scales) ** 2).sum())


def _sigmas_from_gaps(log_gaps, sigma_min, sigma_max):
    """Decreasing σ [len(log_gaps) + 2] from sigma_max to sigma_min, then 0: the log σ span split in
    proportion to softmax(log_gaps)."""
    share = torch.softmax(torch.as_tensor(log_gaps, dtype=torch.float64), 0)
    span = math.log(sigma_max) - math.log(sigma_min)
    log_sigma = math.log(sigma_max) - span * torch.cat([share.new_zeros(1), share.cumsum(0)])
    sigma = log_sigma.exp()
    sigma[0], sigma[-1] = sigma_max, sigma_min
    return torch.cat([sigma, sigma.new_zeros(1)])


def _gaps_from_sigmas(sigmas):
    log_sigma = sigmas[:-1].log()
    return (log_sigma[:-1] - log_sigma[1:]).log().numpy()


def surrogate_sigmas(profile, num_steps, solver='heun', sigma_min=None, sigma_max=None):
    """The `num_steps` σ (float64 [num_steps + 1], decreasing from sigma_max to sigma_min, then 0) that
    minimise `solver`'s endpoint error on the profile's Gaussian surrogate (module docstring). Starts
    from whichever of karras ρ = 7 and log-linear the surrogate prefers, so it never scores worse on the
    surrogate than either; a profile never refreshed (NaN) gives karras ρ = 7. Deterministic; seconds
    on a CPU for tens of steps (half a minute for 35 steps of dpmpp_2m)."""
    sigma_min = profile.sigma_min if sigma_min is None else float(sigma_min)
    sigma_max = profile.sigma_max if sigma_max is None else float(sigma_max)
    if solver not in SURROGATE_SOLVERS:
        raise ValueError(f"solver: the surrogate schedule knows {', '.join(SURROGATE_SOLVERS)} (got {solver!r})")
    if not (isinstance(num_steps, int) and num_steps >= 2):
        raise ValueError(f'num_steps: expected an integer >= 2, got {num_steps!r}')
    if not 0 < sigma_min < sigma_max < math.inf:
        raise ValueError(f'sigma_min, sigma_max: expected 0 < sigma_min < sigma_max < inf, got {sigma_min}, {sigma_max}')
    solver = SURROGATE_SOLVERS[solver]
    karras = karras_sigmas(num_steps, sigma_min, sigma_max, rho=7.0)
    sigma, mmse = profile.mmse()
    if not torch.isfinite(mmse).all():  # never refreshed: nothing to fit, so EDM's default
        return karras.to(profile.sigma_grid.device)
    scales, weights = fit_modes(sigma.cpu(), mmse.cpu(), profile.sigma_min, profile.sigma_max)
    starts = [karras, loglinear_sigmas(num_steps, sigma_min, sigma_max)]
    errors = [surrogate_error(s, solver, scales, weights) for s in starts]
    start_error = min(errors)
    start = starts[errors.index(start_error)]
    if num_steps == 2:  # nothing between σ_max and σ_min to move
        return start.to(profile.sigma_grid.device)

    def log_error(log_gaps):
        error = surrogate_error(_sigmas_from_gaps(log_gaps, sigma_min, sigma_max), solver, scales, weights)
        return math.log(max(error, 1e-300))

    # Bounded so that no step's share of the log σ span underflows (a line search once drove one to
    # ~e^-800: two equal σ, which the solvers refuse); e^±10 never binds a sensible schedule.
    gaps = _gaps_from_sigmas(start)
    result = minimize(log_error, gaps, method='L-BFGS-B', bounds=[(-LOG_GAP_BOUND, LOG_GAP_BOUND)] * len(gaps),
                      options={'maxiter': MAX_ITERATIONS})
    best = _sigmas_from_gaps(result.x, sigma_min, sigma_max)
    if surrogate_error(best, solver, scales, weights) > start_error:
        best = start
    return best.to(profile.sigma_grid.device)
