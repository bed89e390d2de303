"""Solvers of the EDM probability-flow ODE dx/dσ = (x − D(x; σ))/σ and its ancestral SDE variants.

Every solver has one signature:

    solver(denoiser, x, sigmas, *, generator=None, callback=None, **options) -> x

- `denoiser(x, sigma) -> x0_hat`, `sigma` a [batch] tensor in x's dtype and device;
- `x` [batch, ...]: the starting point at σ = sigmas[0] (standard noise times sigmas[0]);
- `sigmas`: a strictly decreasing 1-D tensor ending in 0 (see `schedules.py`);
- `generator` (a torch.Generator, or a `seeds.SeedGenerator` with one stream per sample) drives all
  fresh noise; `callback`, if given, is called after each step with
  {'i', 'sigma', 'sigma_next', 'x' (after the step, at sigma_next), 'denoised' (D at sigma)}.

The solvers run in x's dtype under `torch.no_grad()`. Denoiser calls (NFE) for N steps: Heun
2N − 1 (no correction on the step to σ = 0), every other solver N.
"""

import math

import torch


def _steps(sigmas):
    """Check `sigmas` and return its consecutive pairs (σ_i, σ_{i+1}) as Python floats."""
    sigmas = torch.as_tensor(sigmas)
    if sigmas.ndim != 1 or len(sigmas) < 2:
        raise ValueError(f'sigmas: must be a 1-D tensor with at least 2 entries (got shape {tuple(sigmas.shape)})')
    if sigmas[-1] != 0:
        raise ValueError(f'sigmas: must end in 0 (got {sigmas[-1].item()})')
    if not (sigmas[1:] < sigmas[:-1]).all():
        raise ValueError('sigmas: must be strictly decreasing')
    values = sigmas.tolist()
    return list(zip(values[:-1], values[1:]))


def _denoise(denoiser, x, sigma):
    return denoiser(x, x.new_full((x.shape[0],), sigma))


def _noise_like(x, generator):
    if hasattr(generator, 'randn'):  # one stream per sample
        return generator.randn(x.shape, device=x.device, dtype=x.dtype)
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def _report(callback, i, sigma, sigma_next, x, denoised):
    if callback is not None:
        callback({'i': i, 'sigma': sigma, 'sigma_next': sigma_next, 'x': x, 'denoised': denoised})


def euler_step(x, denoised, sigma, sigma_next):
    """One Euler step of the ODE from σ to σ_next: the slope (x − D)/σ is the scaled noise estimate."""
    return x + (sigma_next - sigma) * (x - denoised) / sigma


@torch.no_grad()
def euler(denoiser, x, sigmas, *, generator=None, callback=None):
    """Euler's method on the ODE: deterministic DDIM in the VE (σ) parameterisation."""
    for i, (sigma, sigma_next) in enumerate(_steps(sigmas)):
        denoised = _denoise(denoiser, x, sigma)
        x = euler_step(x, denoised, sigma, sigma_next)
        _report(callback, i, sigma, sigma_next, x, denoised)
    return x


@torch.no_grad()
def heun(denoiser, x, sigmas, *, generator=None, callback=None, S_churn=0.0, S_min=0.0, S_max=math.inf, S_noise=1.0):
    """EDM Algorithm 2: Heun's second-order method with optional churn (deterministic at S_churn = 0).

    On steps with S_min <= σ <= S_max, noise is first added to raise σ to σ̂ = σ(1 + γ),
    γ = min(S_churn/N, √2 − 1) (N steps), with S_noise scaling that noise.
    """
    steps = _steps(sigmas)
    if not S_churn >= 0:
        raise ValueError(f'S_churn: must be >= 0 (got {S_churn!r})')
    gamma_churn = min(S_churn / len(steps), math.sqrt(2) - 1)
    for i, (sigma, sigma_next) in enumerate(steps):
        gamma = gamma_churn if S_min <= sigma <= S_max else 0.0
        sigma_hat = sigma * (1 + gamma)
        if gamma > 0:
            x = x + math.sqrt(sigma_hat ** 2 - sigma ** 2) * S_noise * _noise_like(x, generator)
        denoised = _denoise(denoiser, x, sigma_hat)
        x = heun_step(denoiser, x, denoised, sigma_hat, sigma_next)
        _report(callback, i, sigma, sigma_next, x, denoised)
    return x


def heun_step(denoiser, x, denoised, sigma, sigma_next):
    """One Heun step from σ to σ_next given denoised = D(x; σ): the Euler step, then the trapezoidal
    correction (one more denoiser call), except on the step to σ = 0, which stays first order."""
    x_next = euler_step(x, denoised, sigma, sigma_next)
    if sigma_next > 0:
        slope = (x - denoised) / sigma
        slope_next = (x_next - _denoise(denoiser, x_next, sigma_next)) / sigma_next
        x_next = x + (sigma_next - sigma) * 0.5 * (slope + slope_next)
    return x_next


def _ancestral(denoiser, x, sigmas, generator, callback, eta, s_noise):
    """Ancestral sampling: step deterministically down to σ_down, then add fresh noise of std σ_up,
    where σ_down² + σ_up² = σ_next² and η scales σ_up between 0 (the ODE) and DDPM's posterior (1)."""
    if not 0 <= eta <= 1:
        raise ValueError(f'eta: must be in [0, 1] (got {eta!r})')
    for i, (sigma, sigma_next) in enumerate(_steps(sigmas)):
        denoised = _denoise(denoiser, x, sigma)
        sigma_up = eta * math.sqrt(sigma_next ** 2 * (sigma ** 2 - sigma_next ** 2) / sigma ** 2)
        sigma_down = math.sqrt(sigma_next ** 2 - sigma_up ** 2)  # == sigma_next exactly when sigma_up == 0
        x = euler_step(x, denoised, sigma, sigma_down)
        if sigma_up > 0:
            x = x + s_noise * sigma_up * _noise_like(x, generator)
        _report(callback, i, sigma, sigma_next, x, denoised)
    return x


@torch.no_grad()
def ddim(denoiser, x, sigmas, *, generator=None, callback=None, eta=0.0):
    """DDIM with stochasticity η in [0, 1]: η = 0 is `euler`, η = 1 is ancestral (DDPM-like) sampling."""
    return _ancestral(denoiser, x, sigmas, generator, callback, eta=eta, s_noise=1.0)


@torch.no_grad()
def euler_ancestral(denoiser, x, sigmas, *, generator=None, callback=None, eta=1.0, s_noise=1.0):
    """k-diffusion's Euler-ancestral: DDIM at η = 1 by default, with the fresh noise scaled by s_noise."""
    return _ancestral(denoiser, x, sigmas, generator, callback, eta=eta, s_noise=s_noise)


@torch.no_grad()
def dpmpp_2m(denoiser, x, sigmas, *, generator=None, callback=None):
    """DPM-Solver++(2M) (Lu et al. 2022): exact integration of the linear part in t = −log σ with the
    denoiser extrapolated linearly from the previous step; first order on the first step and on
    the step to σ = 0.

    Step from σ to σ_next: x ← (σ_next/σ) x + (1 − σ_next/σ) D̃, with D̃ = D (first order) or
    D̃ = (1 + 1/(2r)) D − 1/(2r) D_prev, r = h_prev/h, h = log(σ/σ_next).
    """
    denoised_prev, sigma_prev = None, None
    for i, (sigma, sigma_next) in enumerate(_steps(sigmas)):
        denoised = _denoise(denoiser, x, sigma)
        x = dpmpp_2m_step(x, denoised, sigma, sigma_next, denoised_prev, sigma_prev)
        denoised_prev, sigma_prev = denoised, sigma
        _report(callback, i, sigma, sigma_next, x, denoised)
    return x


def dpmpp_2m_step(x, denoised, sigma, sigma_next, denoised_prev=None, sigma_prev=None):
    """One DPM-Solver++(2M) step from σ to σ_next given denoised = D(x; σ) and, from the previous step,
    D at σ_prev (None on the first step: first order, as on the step to σ = 0)."""
    extrapolated = denoised
    if denoised_prev is not None and sigma_next > 0:
        r = math.log(sigma_prev / sigma) / math.log(sigma / sigma_next)
        extrapolated = (1 + 0.5 / r) * denoised - (0.5 / r) * denoised_prev
    ratio = sigma_next / sigma
    return ratio * x + (1 - ratio) * extrapolated


SOLVERS = {'euler': euler, 'heun': heun, 'ddim': ddim, 'euler_ancestral': euler_ancestral, 'dpmpp_2m': dpmpp_2m}
