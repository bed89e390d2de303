"""σ discretisations of the sampling ODE/SDE.

Each function returns a strictly decreasing float64 tensor [num_steps + 1] on `device`: num_steps
noise levels from the largest down to the smallest, then an appended 0 (the last step lands on the
data, as in EDM).
"""

import math
import numbers

import torch


def _check_num_steps(num_steps):
    if isinstance(num_steps, bool) or not isinstance(num_steps, numbers.Integral) or num_steps < 1:
        raise ValueError(f'num_steps: must be an integer >= 1 (got {num_steps!r})')


def _check_range(sigma_min, sigma_max):
    if not 0 < sigma_min < sigma_max:  # also false for NaN
        raise ValueError(f'sigma_min, sigma_max: must satisfy 0 < sigma_min < sigma_max (got {sigma_min!r}, {sigma_max!r})')


def _append_zero(sigmas):
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def karras_sigmas(num_steps, sigma_min=0.002, sigma_max=80.0, rho=7.0, device=None):
    """EDM eq. 5: σ_i = (σ_max^(1/ρ) + i/(N−1) (σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ, i = 0..N−1, then 0.

    ρ = 7 concentrates steps at small σ; ρ = 1 is uniform in σ and ρ → ∞ tends to `loglinear_sigmas`.
    """
    _check_num_steps(num_steps)
    _check_range(sigma_min, sigma_max)
    if not rho > 0:
        raise ValueError(f'rho: must be > 0 (got {rho!r})')
    ramp = torch.linspace(0, 1, num_steps, dtype=torch.float64, device=device)
    max_root, min_root = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return _append_zero((max_root + ramp * (min_root - max_root)) ** rho)


def loglinear_sigmas(num_steps, sigma_min=0.002, sigma_max=80.0, device=None):
    """Geometric spacing from σ_max to σ_min (uniform in log σ), then 0."""
    _check_num_steps(num_steps)
    _check_range(sigma_min, sigma_max)
    log_sigma = torch.linspace(math.log(sigma_max), math.log(sigma_min), num_steps, dtype=torch.float64, device=device)
    return _append_zero(log_sigma.exp())


def vp_sigmas(num_steps, beta_d=19.9, beta_min=0.1, epsilon_s=1e-3, device=None):
    """The VP discretisation of the EDM paper's ablations (its Table 1), then 0.

    t_i = 1 + i/(N−1) (ε_s − 1), σ(t) = sqrt(exp(β_d t²/2 + β_min t) − 1): from σ(1) ≈ 152 down to
    σ(ε_s) ≈ 0.01 with the defaults.
    """
    _check_num_steps(num_steps)
    if not beta_d > 0:
        raise ValueError(f'beta_d: must be > 0 (got {beta_d!r})')
    if not beta_min >= 0:
        raise ValueError(f'beta_min: must be >= 0 (got {beta_min!r})')
    if not 0 < epsilon_s < 1:
        raise ValueError(f'epsilon_s: must be in (0, 1) (got {epsilon_s!r})')
    t = torch.linspace(1, epsilon_s, num_steps, dtype=torch.float64, device=device)
    return _append_zero(torch.expm1(0.5 * beta_d * t ** 2 + beta_min * t).sqrt())


SCHEDULES = {'karras': karras_sigmas, 'loglinear': loglinear_sigmas, 'vp': vp_sigmas}
