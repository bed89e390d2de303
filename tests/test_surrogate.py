"""The surrogate schedule (entropy/surrogate.py) against Gaussian ground truth: the fitted modes match
the mmse curve, the surrogate's error is the solvers' actual error on Gaussian data, and its schedule
beats ρ = 7 and log-linear there with every solver."""

import math

import pytest
import torch

import sampling
from entropy import EntropyProfile
from entropy.surrogate import fit_modes, surrogate_error, surrogate_sigmas

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
# A Gaussian with three scales, two dimensions each: x0 ~ N(0, diag(c²)).
SCALES = torch.tensor([0.02, 0.02, 0.3, 0.3, 2.0, 2.0], dtype=torch.float64)


def gaussian_mmse_per_mode(sigma, scales):
    """[len(sigma), len(scales)]: c²σ²/(c² + σ²), the mmse of one dimension of scale c."""
    variance = scales ** 2
    return variance * sigma[:, None] ** 2 / (variance + sigma[:, None] ** 2)


def gaussian_mmse(sigma):
    return gaussian_mmse_per_mode(sigma, SCALES).sum(1)


def exact_denoiser(x, sigma):
    variance = SCALES.to(x.dtype) ** 2
    return x * variance / (variance + sigma[:, None].to(x.dtype) ** 2)


def gaussian_profile():
    """The profile measured offline with the exact denoiser (what a perfect model's would be)."""
    def draw(n):
        return torch.randn(n, len(SCALES), generator=generator, dtype=torch.float64) * SCALES
    generator = torch.Generator().manual_seed(0)
    return EntropyProfile.from_denoiser(exact_denoiser, draw, SIGMA_MIN, SIGMA_MAX, num_points=64,
                                        samples_per_point=4096, generator=generator)


def actual_error(sigmas, solver, n=20000):
    """E‖x̂(0) − x(0)‖² of `solver` on samples of the Gaussian, against the exact flow x(0) = c·z."""
    z = torch.randn(n, len(SCALES), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    start = z * (SCALES ** 2 + sigmas[0] ** 2).sqrt()
    end = sampling.SOLVERS[solver](exact_denoiser, start, sigmas)
    return (end - SCALES * z).square().sum(1).mean().item()


def test_fitted_modes_reproduce_the_mmse_curve():
    sigma = torch.logspace(math.log10(SIGMA_MIN), math.log10(SIGMA_MAX), 64, dtype=torch.float64)
    mmse = gaussian_mmse(sigma)
    scales, weights = fit_modes(sigma, mmse, SIGMA_MIN, SIGMA_MAX)
    fitted = (weights * gaussian_mmse_per_mode(sigma, scales)).sum(1)
    assert torch.allclose(fitted, mmse, rtol=0.02)
    assert weights.sum().item() == pytest.approx(len(SCALES), rel=0.05)  # as many dimensions as the data
    assert (weights * scales ** 2).sum().item() == pytest.approx((SCALES ** 2).sum().item(), rel=0.02)  # tr Cov


@pytest.mark.parametrize('solver', ['euler', 'heun', 'dpmpp_2m'])
def test_surrogate_error_is_the_solvers_error_on_gaussian_data(solver):
    sigmas = sampling.karras_sigmas(6, SIGMA_MIN, 3.0)  # σ_max near the largest scale: the start matters
    counts = torch.full((len(SCALES),), 1.0, dtype=torch.float64)  # one dimension per entry
    predicted = surrogate_error(sigmas, solver, SCALES, counts)
    assert actual_error(sigmas, solver) == pytest.approx(predicted, rel=0.05)  # Monte Carlo: z² averages to 1 ± 1%


@pytest.mark.parametrize('solver, steps', [('euler', 6), ('heun', 4), ('dpmpp_2m', 6), ('euler_ancestral', 6)])
def test_surrogate_schedule_beats_karras_and_loglinear_on_gaussian_data(solver, steps):
    profile = gaussian_profile()
    sigmas = surrogate_sigmas(profile, steps, solver)
    assert sigmas.dtype == torch.float64 and len(sigmas) == steps + 1 and sigmas[-1] == 0
    assert (sigmas[1:] < sigmas[:-1]).all()
    assert sigmas[0].item() == pytest.approx(SIGMA_MAX) and sigmas[-2].item() == pytest.approx(SIGMA_MIN)
    deterministic = 'euler' if solver == 'euler_ancestral' else solver  # judged on the ODE of its order
    mine = actual_error(sigmas, deterministic)
    for other in (sampling.karras_sigmas(steps, SIGMA_MIN, SIGMA_MAX), sampling.loglinear_sigmas(steps, SIGMA_MIN, SIGMA_MAX)):
        assert mine < 0.8 * actual_error(other, deterministic)


def test_the_schedule_depends_on_the_solver():
    profile = gaussian_profile()
    euler, heun = surrogate_sigmas(profile, 8, 'euler'), surrogate_sigmas(profile, 8, 'heun')
    assert not torch.allclose(euler, heun, rtol=0.05)


def test_bad_input_is_one_clear_error():
    never_refreshed = EntropyProfile(SIGMA_MIN, SIGMA_MAX)  # NaN: nothing to fit, so EDM's ρ = 7
    assert torch.equal(surrogate_sigmas(never_refreshed, 8, 'heun'), sampling.karras_sigmas(8, SIGMA_MIN, SIGMA_MAX))
    sigma = torch.logspace(-2, 1, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match='non-positive mmse'):
        fit_modes(sigma, torch.zeros(8, dtype=torch.float64), SIGMA_MIN, SIGMA_MAX)
    with pytest.raises(ValueError, match='solver'):
        surrogate_sigmas(gaussian_profile(), 8, 'rk4')
    with pytest.raises(ValueError, match='num_steps'):
        surrogate_sigmas(gaussian_profile(), 1, 'heun')
