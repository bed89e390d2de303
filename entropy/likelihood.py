"""Exact log-likelihood of continuous data from a denoiser, by the pointwise I-MMSE identity
(Kong, Brekelmans, Ver Steeg 2023, "Information-theoretic diffusion").

For the forward process x = x0 + σε, a fixed point x0 and the error
    err(x0, σ) = E_ε ‖x0 − D(x0 + σε; σ)‖²   (summed over the d dimensions, data units)
of the optimal denoiser D(x; σ) = E[x0 | x], the information between x0 and x at SNR γ = 1/σ² obeys
E_ε[log p(x|x0) − log p_σ(x)] = ½ ∫_0^γ err dγ' pointwise in x0 (Venkat & Weissman 2012). Written for
the data and for a reference g = N(0, c²I) at the same x0, the Gaussian channel term cancels and,
letting γ → ∞ (σ → 0, where p_σ → p) with dγ/γ = −2 dlog σ,
    −log p(x0) = −log g(x0) + ∫ [err(x0, σ) − err_g(x0, σ)] / σ² dlog σ   over all σ > 0,
with −log g(x0) = (d/2) log(2πc²) + ‖x0‖²/(2c²) and err_g the error of g's own optimal denoiser
D_g(x; σ) = c²/(c² + σ²) x. Since ∫ [err_g(x0, σ) − mmse_g(σ)] / σ² dlog σ = ‖x0‖²/(2c²) − d/2
with mmse_g = d c²σ²/(c² + σ²), this equals the form of Kong et al.,
    −log p(x0) = (d/2) log(2πec²) + ∫ [err(x0, σ) − mmse_g(σ)] / σ² dlog σ,
for every x0; the pointwise reference used here has the same value and a far smaller variance.

Computation: the integrand is evaluated on `num_points` σ log-spaced over [sigma_min, sigma_max] and
integrated by the trapezoid rule in log σ. At each σ, `num_noise` antithetic pairs ±ε are shared by D and
D_g (common random numbers): the difference is a control-variate estimate whose variance vanishes where
D is near D_g, as at both ends, and the pairs cancel its leading term, odd in ε. Beyond the grid the
integrand is taken as zero, i.e. the data are credited with the reference's exact contribution there;
what that misses is O(σ_min²) for a smooth density (err − err_g = O(σ⁴)) and O(1/σ_max²) at large σ
(err → ‖x0 − E x0‖², err_g → ‖x0‖²).

The identity holds for the optimal denoiser. With a trained one, averaged over data from p, the errors
can only be larger, so the mean estimate bounds the data's entropy from above.
"""

import math

import torch

from datasets.images import to_data


# Points of the σ grid of `nll`: its denoiser calls per estimate (metrics.py counts its progress in them).
NLL_POINTS = 64


@torch.no_grad()
def nll(denoiser, x0, sigma_min=1e-3, sigma_max=1e3, num_points=NLL_POINTS, num_noise=4, sigma_ref=0.5, generator=None):
    """−log p(x0) [n] in nats (float64) of data points `x0` [n, ...] under the density whose denoiser is
    `denoiser(x, σ [batch]) -> x0_hat`, called once per σ on a batch of 2·num_noise·n (`num_noise`
    antithetic pairs ±ε per point). `sigma_ref`: the std c of the reference N(0, c²I); the result does
    not depend on it beyond truncation and Monte Carlo error (pick about the data's scale)."""
    n, d = len(x0), x0[0].numel()
    c2 = sigma_ref ** 2
    log_sigma = torch.linspace(math.log(sigma_min), math.log(sigma_max), num_points, dtype=torch.float64)
    x0_64 = x0.double().flatten(1)
    targets = x0_64.repeat(2 * num_noise, 1)
    integrand = torch.zeros(num_points, n, dtype=torch.float64, device=x0.device)
    for i, sigma in enumerate(log_sigma.exp().tolist()):
        noise = torch.randn((num_noise, *x0.shape), generator=generator, device=x0.device, dtype=x0.dtype)
        # Antithetic pairs: the error's leading term, odd in ε, cancels within each pair.
        x = (x0 + sigma * torch.cat([noise, -noise])).flatten(0, 1)
        denoised = denoiser(x, torch.full((len(x),), sigma, dtype=x0.dtype, device=x0.device))
        err = (denoised.double().flatten(1) - targets).square().sum(1)
        err_ref = (c2 / (c2 + sigma ** 2) * x.double().flatten(1) - targets).square().sum(1)
        integrand[i] = ((err - err_ref) / sigma ** 2).reshape(2 * num_noise, n).mean(0)
    gap = torch.trapezoid(integrand, log_sigma.to(x0.device), dim=0)
    nll_ref = 0.5 * d * math.log(2 * math.pi * c2) + x0_64.square().sum(1) / (2 * c2)
    return nll_ref + gap


def bits_per_dim(nll_nats, dim):
    """Nats per sample -> bits per dimension (continuous density in data units; no dequantisation)."""
    return nll_nats / (dim * math.log(2))


# 8-bit pixels k = 0..255 are the data values k/127.5 − 1 (datasets.images, at data.scale 1): neighbours 2/255 apart.
PIXEL_STEP = 2 / 255


@torch.no_grad()
def image_bits_per_dim(denoiser, pixels, generator=None, scale=1.0, **nll_kwargs):
    """Bits per dimension [n] of 8-bit images `pixels` [n, C, H, W] (uint8) under the model of `denoiser`,
    with uniform dequantisation, the usual correction for a continuous density of discrete data: each
    pixel becomes a value drawn uniformly over its bin, x = scale·(k/127.5 − 1) + u with
    u ~ U(−Δ/2, Δ/2), Δ = scale·PIXEL_STEP (`scale`: the model's `data.scale`), and by Jensen
    −log P(k) ≤ E_u[−log p(x)] − d·log Δ, whatever the scale. One draw of u per image; `nll`
    (its keyword arguments: the σ grid, noise pairs) estimates −log p(x). An upper bound on the model's
    discrete NLL up to Monte Carlo error, and the I-MMSE estimate with a trained denoiser is biased up
    again (module docstring): both make the figure larger, never smaller."""
    step = scale * PIXEL_STEP
    x = to_data(pixels, scale)
    x = x + (torch.rand(x.shape, generator=generator, device=x.device) - 0.5) * step
    d = x[0].numel()
    nll_kwargs.setdefault('sigma_ref', 0.5 * scale)  # about the data's scale (see `nll`)
    nats = nll(denoiser, x, generator=generator, **nll_kwargs) - d * math.log(step)
    return bits_per_dim(nats, d)
