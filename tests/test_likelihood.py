"""I-MMSE log-likelihood against closed forms: Gaussian data and a Gaussian mixture with exact denoisers."""

import math

import pytest
import torch

from datasets import ring
from entropy.likelihood import bits_per_dim, nll


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def gaussian_denoiser(c):
    """E[x0 | x] for x0 ~ N(0, c²I)."""
    return lambda x, sigma: c ** 2 / (c ** 2 + sigma[:, None] ** 2) * x


def gaussian_nll(x0, c):
    """−log N(x0; 0, c²I) per row."""
    return 0.5 * x0.shape[1] * math.log(2 * math.pi * c ** 2) + x0.double().square().sum(1) / (2 * c ** 2)


@pytest.mark.parametrize('d, c, sigma_ref', [(8, 2.0, 1.0), (2, 0.5, 1.0)])
def test_gaussian_nll_matches_closed_form(d, c, sigma_ref):
    # The reference differs from the data, so the integral carries the whole difference.
    n = 256
    x0 = c * torch.randn(n, d, generator=gen(0))
    estimate = nll(gaussian_denoiser(c), x0, num_points=48, num_noise=8, sigma_ref=sigma_ref, generator=gen(1))
    exact = gaussian_nll(x0, c)
    entropy = 0.5 * d * math.log(2 * math.pi * math.e * c ** 2)
    assert estimate.shape == (n,) and estimate.dtype == torch.float64
    error = estimate - exact
    # Unbiased: the mean error within 4 standard errors, and within 2% of the entropy.
    assert error.mean().abs().item() < min(4 * error.std().item() / math.sqrt(n), 0.02 * abs(entropy) + 0.01)
    # The batch mean against the closed form, up to the batch's own spread (√(d/2) nats per point).
    assert estimate.mean().item() == pytest.approx(entropy, abs=4 * math.sqrt(d / 2 / n) + 0.02 * abs(entropy))
    # Per point: the estimate tracks −log N(x0), whose spread across points is √(d/2) nats.
    assert error.square().mean().sqrt().item() < 0.3 * math.sqrt(d / 2)
    assert torch.corrcoef(torch.stack([estimate, exact]))[0, 1] > 0.95


def test_reference_equal_to_the_data_is_exact():
    # D = D_ref: the integrand vanishes draw by draw, leaving the closed-form reference term.
    x0 = 0.5 * torch.randn(64, 3, generator=gen(2), dtype=torch.float64)
    torch.testing.assert_close(nll(gaussian_denoiser(0.5), x0, num_noise=1, sigma_ref=0.5, generator=gen(3)),
                               gaussian_nll(x0, 0.5))


def test_mixture_nll_matches_its_log_prob():
    mixture = ring()
    x0 = mixture.sample(256, generator=gen(4))
    estimate = nll(mixture, x0, num_points=48, num_noise=4, generator=gen(5))
    exact = -mixture.log_prob(x0.double())
    error = estimate - exact
    # The mean error within 4 standard errors of zero, and small against the spread of −log p.
    assert error.mean().abs().item() < 4 * error.std().item() / math.sqrt(256)
    assert error.mean().abs().item() < 0.05 * exact.std().item() + 0.05
    assert torch.corrcoef(torch.stack([estimate, exact]))[0, 1] > 0.5


def test_a_worse_denoiser_gives_a_larger_nll():
    x0 = torch.randn(128, 2, generator=gen(6))
    optimal = nll(gaussian_denoiser(1.0), x0, num_points=32, num_noise=2, generator=gen(7))
    shrunk = nll(gaussian_denoiser(0.7), x0, num_points=32, num_noise=2, generator=gen(7))
    assert shrunk.mean() > optimal.mean() + 0.05


def test_bits_per_dim():
    assert bits_per_dim(torch.tensor([2 * math.log(2) * 3]), 3).item() == pytest.approx(2.0)


@pytest.mark.parametrize('scale', [1.0, 4.0])
def test_image_bits_per_dim_is_the_dequantised_bound_of_the_discrete_likelihood(scale):
    """8-bit images of a Gaussian N(μ, s²I) in pixel units [−1, 1]: the dequantised estimate matches its
    closed form E_u[−log p(x + u)] − d·log Δ, and bounds the exact discrete NLL −log Π P(pixel bin) from
    above. A model of the data at `data.scale` a (the Gaussian N(aμ, a²s²I)) gives the same bits/dim:
    the pixels' probabilities do not depend on the units the model works in."""
    from entropy.likelihood import PIXEL_STEP, image_bits_per_dim
    mean, s, d = 0.1, 0.3, 12
    pixels = ((mean + s * torch.randn(400, 3, 2, 2, generator=gen(0))).clamp(-1, 1) * 127.5 + 127.5).round().to(torch.uint8)

    def denoiser(x, sigma):  # in the model's units: data scale·(k/127.5 − 1)
        m, v = scale * mean, (scale * s) ** 2
        return m + v / (v + sigma[:, None, None, None] ** 2) * (x - m)
    estimate = image_bits_per_dim(denoiser, pixels, generator=gen(1), scale=scale, num_points=48, num_noise=8)
    centre = pixels.double().flatten(1) / 127.5 - 1
    # E_u[(x + u − μ)²] = (x − μ)² + Δ²/12 for u uniform on a bin of width Δ.
    dequantised = (0.5 * d * math.log(2 * math.pi * s ** 2) + ((centre - mean).square().sum(1) + d * PIXEL_STEP ** 2 / 12)
                   / (2 * s ** 2) - d * math.log(PIXEL_STEP)) / (d * math.log(2))
    error = estimate - dequantised  # Monte Carlo: the one draw of u per image, and the I-MMSE estimate
    assert abs(error.mean().item()) < 4 * error.std().item() / math.sqrt(len(error)) + 0.01
    normal = torch.distributions.Normal(torch.tensor(mean, dtype=torch.float64), s)
    discrete = -(normal.cdf(centre + PIXEL_STEP / 2) - normal.cdf(centre - PIXEL_STEP / 2)).log().sum(1) / (d * math.log(2))
    assert (discrete <= dequantised + 1e-12).all()  # the bound, image by image (Jensen)
    assert abs(estimate.mean() - discrete.mean()) < 0.01  # and a tight one for a smooth density
    assert 6 < estimate.mean() < 8  # log2(127.5 · √(2πe) · 0.3) ≈ 6.6 bits: the pixel grid's share
