"""The structure rate (lmmse − mmse)/σ² against closed forms, Monte Carlo negentropy, and its own laws."""

import functools
import io
import math

import numpy as np
import pytest
import scipy.stats
import torch

from datasets.mixture import GaussianMixture
from datasets import ring
from entropy.profile import EntropyProfile
from entropy import profile_kwargs
from entropy.spectrum import covariance_spectrum, lmmse

from .test_entropy import assert_valid_sigmas, with_config


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def rotated_covariance(eigenvalues, seed=0):
    q, _ = torch.linalg.qr(torch.randn(len(eigenvalues), len(eigenvalues), generator=gen(seed), dtype=torch.float64))
    return q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T


def gaussian_sampler(mean, cov, generator):
    factor = torch.linalg.cholesky(cov)
    return lambda n: mean + torch.randn(n, len(cov), generator=generator, dtype=torch.float64) @ factor.T


# (mixture, sigma_min below its finest structure): the ring (std 0.05, 3.2 nats of negentropy) and three
# anisotropic, well separated components (1.6 nats).
MIXTURES = dict(ring=(ring(), 0.002), three=(GaussianMixture(
    [0.5, 0.3, 0.2], [[-1.0, 0.0], [1.0, 0.5], [0.0, -1.5]],
    [[[0.08, 0.03], [0.03, 0.05]], [[0.02, 0.0], [0.0, 0.1]], [[0.05, -0.04], [-0.04, 0.05]]]), 0.01))


@functools.lru_cache
def mixture_profile(name):
    """The exact profile of a mixture in MIXTURES, with the exact spectrum."""
    mixture, sigma_min = MIXTURES[name]
    g = gen(0)
    return EntropyProfile.from_denoiser(mixture, lambda n: mixture.sample(n, generator=g), sigma_min, 50.0,
                                        num_points=48, samples_per_point=8192, generator=g, batch_size=1 << 16,
                                        spectrum=torch.linalg.eigvalsh(mixture.covariance()))


# --------------------------------------------------------------------------------------------------
# The spectrum and the Wiener filter's error.

def test_lmmse_matches_the_matrix_formula():
    cov = rotated_covariance([2.0, 0.3, 0.01])
    eigenvalues = torch.linalg.eigvalsh(cov)
    sigma = torch.tensor([1e-3, 0.05, 0.5, 1.0, 7.0, 300.0], dtype=torch.float64)
    eye = torch.eye(3, dtype=torch.float64)
    direct = torch.stack([torch.trace(cov - cov @ torch.linalg.solve(cov + s ** 2 * eye, cov)) for s in sigma])
    torch.testing.assert_close(lmmse(sigma, eigenvalues), direct, rtol=1e-10, atol=0)
    assert lmmse(0.5, eigenvalues).shape == () and lmmse(0.5, eigenvalues).item() == pytest.approx(direct[2].item())
    assert lmmse(sigma.reshape(2, 3), eigenvalues).shape == (2, 3)
    # The limits: d σ² below the smallest eigenvalue, tr Cov above the largest.
    assert lmmse(1e-4, eigenvalues).item() == pytest.approx(3e-8, rel=1e-3)
    assert lmmse(1e4, eigenvalues).item() == pytest.approx(2.31, rel=1e-6)


def test_covariance_spectrum_of_a_gaussian_sample_matches_the_true_eigenvalues():
    true = [4.0, 1.0, 0.25]
    n = 200_000
    sampler = gaussian_sampler(torch.tensor([3.0, -1.0, 0.5]), rotated_covariance(true, 1), gen(2))
    spectrum = covariance_spectrum(sampler, n, batch_size=30_000)
    assert spectrum.dtype == torch.float64 and (spectrum.diff() <= 0).all()
    # A sample eigenvalue's relative standard error is sqrt(2/n) (distinct eigenvalues).
    assert ((spectrum / torch.tensor(true, dtype=torch.float64) - 1).abs() < 4.5 * math.sqrt(2 / n)).all()


def test_streaming_equals_one_batch_and_a_large_mean_costs_no_precision():
    points = gaussian_sampler(torch.zeros(4), rotated_covariance([1.0, 0.5, 0.1, 1e-3], 3), gen(4))(10_000)
    one_batch = covariance_spectrum(points, batch_size=len(points))
    torch.testing.assert_close(one_batch, torch.linalg.eigvalsh(torch.cov(points.T)).flip(0), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(covariance_spectrum(points, batch_size=777), one_batch, rtol=1e-12, atol=1e-15)
    # Naive sums of x and x² would lose every digit of the 1e-3 eigenvalue at a mean of 1e8.
    shifted = covariance_spectrum(points + 1e8, batch_size=777)
    torch.testing.assert_close(shifted, one_batch, rtol=1e-5, atol=0)
    # From a callable and from the first points of a tensor; shapes [n, ...] are flattened.
    batches = iter(points.reshape(-1, 2, 2).split(1000))
    torch.testing.assert_close(covariance_spectrum(lambda n: next(batches), 10_000, batch_size=1000), one_batch)
    torch.testing.assert_close(covariance_spectrum(points, 5000), covariance_spectrum(points[:5000]))
    with pytest.raises(ValueError, match='num_samples'):
        covariance_spectrum(lambda n: points[:n])


# --------------------------------------------------------------------------------------------------
# The structure rate of exact denoisers.

def test_gaussian_data_has_no_structure():
    cov = rotated_covariance([1.0, 0.2, 0.02], 5)
    mixture = GaussianMixture([1.0], [[0.5, -0.5, 2.0]], cov[None])
    n = 32768
    g = gen(6)
    profile = EntropyProfile.from_denoiser(mixture, lambda n: mixture.sample(n, generator=g), 0.002, 80.0,
                                           num_points=48, samples_per_point=n, generator=g, batch_size=1 << 16,
                                           spectrum=True, dim=3)
    spectrum = torch.linalg.eigvalsh(cov).flip(0)
    torch.testing.assert_close(profile.spectrum, spectrum, rtol=0.02, atol=0)  # estimated from the data
    sigma, structure = profile.structure_rate()
    # Per sample the error is Σ_i e_i z_i² (e_i = λ_i σ²/(λ_i + σ²), z ~ N(0, I)): variance 2 Σ e_i².
    e = spectrum * sigma[:, None] ** 2 / (spectrum + sigma[:, None] ** 2)
    std_error = (2 * e.square().sum(1) / n).sqrt() / sigma ** 2  # of the structure rate, per bin
    assert (structure.abs() < 4.5 * std_error).all()
    _, negentropy = profile.negentropy()
    assert abs(negentropy[0].item()) < 4 * (std_error * profile.bin_width).square().sum().sqrt().item()
    assert profile.structure_fraction().item() < 0.05


def test_high_dimensional_gaussian_has_no_structure_wherever_sigma_falls_in_its_bin():
    # Gaussian data in d = 784 (16 eigenvalues from 1e-5 to 3, 49 dimensions each), σ log-uniform over the
    # grid, so that it spreads across each bin as in training. The Wiener filter is the exact denoiser; its
    # error is Σ_k e_k χ²_49 with e_k = λ_k σ²/(λ_k + σ²). Comparing each bin's mean error with lmmse at
    # the centre measured −10.9 nats of negentropy here (17 standard errors; one bin 6.4).
    eigenvalues = torch.logspace(-5, 0.5, 16, dtype=torch.float64)
    profile = EntropyProfile(0.002, 80.0, num_bins=64, spectrum=eigenvalues.repeat_interleave(49))
    n = 64 * 2048
    sigma = (math.log(0.002) + math.log(80 / 0.002) * torch.rand(n, generator=gen(10), dtype=torch.float64)).exp()
    e = eigenvalues * sigma[:, None] ** 2 / (eigenvalues + sigma[:, None] ** 2)
    chi2 = torch.from_numpy(np.random.default_rng(11).chisquare(49, size=e.shape))
    profile.update(sigma, (e * chi2).sum(1))
    profile.refresh()
    _, structure = profile.structure_rate()
    # Standard errors given the σ drawn: the error's variance is 2·49·Σ_k e_k², and each bin divides by σ_c².
    index = ((sigma.log() - math.log(0.002)) / profile.bin_width).long().clamp(0, 63)
    count = torch.bincount(index, minlength=64).double()
    std_error = (torch.bincount(index, 98 * e.square().sum(1), minlength=64)).sqrt() / count / profile.sigma_grid ** 2
    assert (structure.abs() < 4.5 * std_error).all(), (structure / std_error).abs().max()
    negentropy = (structure * profile.bin_width).sum().item()
    assert abs(negentropy) < 4 * (std_error * profile.bin_width).square().sum().sqrt().item(), negentropy


@pytest.mark.parametrize('name', MIXTURES)
def test_structure_integrates_to_the_monte_carlo_negentropy(name):
    mixture, profile = MIXTURES[name][0], mixture_profile(name)
    sigma, structure = profile.structure_rate()
    gaussian_rate = profile.lmmse()[1] / sigma ** 2
    assert (structure > -0.04 * gaussian_rate).all()  # ≥ 0 up to the ~1% noise of the estimate
    # D(p ‖ g) = E_p[log p(x0) − log g(x0)], g: the Gaussian with the mixture's mean and covariance.
    x0 = mixture.sample(400_000, generator=gen(7)).double()
    gaussian = torch.distributions.MultivariateNormal(mixture.mean(), mixture.covariance())
    log_ratio = mixture.log_prob(x0) - gaussian.log_prob(x0)
    expected = log_ratio.mean().item()
    assert log_ratio.std().item() / math.sqrt(len(x0)) < 0.002 * expected
    assert (structure * profile.bin_width).sum().item() == pytest.approx(expected, rel=0.03)
    # The structure left above σ: all of it at the bottom of the grid, none at the top.
    _, negentropy = profile.negentropy()
    assert negentropy[0].item() == pytest.approx(expected, rel=0.03)
    assert abs(negentropy[-1].item()) < 0.01 * expected
    assert profile.structure_fraction().item() == 1.0


def test_structure_density_and_schedule_follow_the_structure_rate():
    profile = with_config(mixture_profile('ring'), density='structure', floor=0.0)
    sigma, structure = profile.structure_rate()
    weight = structure.clamp_min(0)
    density = profile.log_density(sigma).exp()
    torch.testing.assert_close(density, weight / (weight.sum() * profile.bin_width))
    samples = profile.sample(4000, generator=gen(8))
    assert samples.isfinite().all() and (samples >= 0.002 * (1 - 1e-6)).all() and (samples <= 50 * (1 + 1e-6)).all()
    own_cdf = lambda u: profile.cdf(torch.from_numpy(np.exp(u))).numpy()
    assert scipy.stats.kstest(samples.double().log().numpy(), own_cdf).pvalue > 0.01
    # Unlike the entropic density, little mass below σ = 0.01: the trivial tail of the ring (std 0.05).
    low = torch.tensor([0.01], dtype=torch.float64)
    assert profile.cdf(low).item() < 0.03 and with_config(profile, density='entropic').cdf(low).item() > 0.3
    # A schedule uniform in destroyed structure: the structure left above σ_j grows linearly in j.
    num_steps = 12
    sigmas = profile.sigmas(num_steps, kind='structure')
    assert_valid_sigmas(sigmas, num_steps, 0.002, 50.0)
    left = np.interp(np.log(sigmas[1:-1].numpy()), profile.log_sigma_grid.numpy(),
                     profile.negentropy()[1].numpy()) / (structure * profile.bin_width).sum().item()
    np.testing.assert_allclose(left, np.arange(1, num_steps) / num_steps, atol=0.03)  # the last step: to 0


def test_rescaled_structure_density_is_the_structure_rate_times_sigma():
    profile = with_config(mixture_profile('ring'), density='rescaled-structure', floor=0.0)
    sigma, structure = profile.structure_rate()
    weight = structure.clamp_min(0) * sigma
    torch.testing.assert_close(profile.log_density(sigma).exp(), weight / (weight.sum() * profile.bin_width))
    median = lambda p: torch.exp(p.log_edges[torch.searchsorted(p.cdf_knots, torch.tensor(0.5, dtype=torch.float64))])
    assert median(profile) > 1.5 * median(with_config(profile, density='structure'))  # mass moved up in σ
    assert_valid_sigmas(profile.sigmas(12, kind='rescaled-structure'), 12, 0.002, 50.0)


@functools.lru_cache
def thin_circle_profile():
    """The exact profile of data on a curve: 400 Gaussians of std 0.02 spaced 0.016 apart on the unit
    circle, a one-dimensional manifold (thickness 0.02) spanning two dimensions."""
    angles = torch.arange(400) * 2 * math.pi / 400
    circle = GaussianMixture.isotropic(torch.ones(400), torch.stack([angles.cos(), angles.sin()], 1), torch.full((400,), 0.02))
    g = gen(3)
    return EntropyProfile.from_denoiser(circle, lambda n: circle.sample(n, generator=g), 0.002, 50.0, num_points=32,
                                        samples_per_point=2048, generator=g, batch_size=8192,
                                        spectrum=torch.linalg.eigvalsh(circle.covariance()), floor=0.0)


def test_on_a_manifold_the_structure_rate_stays_up_at_small_sigma_and_rescaling_removes_the_tail():
    profile = thin_circle_profile()
    sigma, structure = profile.structure_rate()
    # Between the thickness and the radius the linear estimate keeps both dimensions' noise while the
    # curve removes the normal one: about rank 2 − dimension 1 = 1 nat per log σ, however small σ is.
    plateau = (sigma > 0.06) & (sigma < 0.2)
    assert ((structure[plateau] > 0.6) & (structure[plateau] < 1.2)).all(), structure[plateau]
    low = torch.tensor([0.1], dtype=torch.float64)
    structure_low = with_config(profile, density='structure').cdf(low).item()
    rescaled_low = with_config(profile, density='rescaled-structure').cdf(low).item()
    assert structure_low > 0.5 and rescaled_low < structure_low / 2, (structure_low, rescaled_low)


# --------------------------------------------------------------------------------------------------
# structure_fraction, state, degenerate statistics.

def measured(mmse, spectrum=(1e12,), **kwargs):
    """A profile on 2 bins one e-fold wide each (σ ∈ [1, e²]) whose mmse per bin is `mmse`."""
    profile = EntropyProfile(1.0, math.e ** 2, num_bins=2, min_count=1, spectrum=spectrum, **kwargs)
    profile.update(profile.sigma_grid, torch.as_tensor(mmse, dtype=torch.float64))
    profile.refresh()
    return profile


@pytest.mark.parametrize('structure, alpha', [(-0.1, 0.0), (0.0, 0.0), (0.05, 0.028), (0.25, 0.5), (0.5, 1.0),
                                              (3.0, 1.0)])
def test_structure_fraction_is_a_smoothstep_of_the_negentropy_per_dimension(structure, alpha):
    # A huge eigenvalue: lmmse = σ² (d = 1); mmse = (1 − a)σ² makes the structure rate a, N = 2a nats.
    profile = measured((1 - structure) * EntropyProfile(1.0, math.e ** 2, num_bins=2).sigma_grid ** 2,
                       structure_nats=1.0)
    torch.testing.assert_close(profile.structure_rate()[1], torch.full((2,), structure, dtype=torch.float64))
    fraction = profile.structure_fraction()
    assert fraction.shape == () and fraction.dtype == torch.float64
    assert fraction.item() == pytest.approx(alpha, abs=1e-3)
    # Per dimension: twice the negentropy in twice the dimensions, the same α.
    two_dims = measured((2 - 2 * structure) * profile.sigma_grid ** 2, spectrum=(1e12, 1e12), structure_nats=1.0)
    assert two_dims.structure_fraction().item() == pytest.approx(alpha, abs=1e-3)


def test_spectrum_survives_a_state_dict_round_trip():
    profile = with_config(mixture_profile('three'), density='structure', structure_nats=0.3)
    buffer = io.BytesIO()
    torch.save(profile.state_dict(), buffer)
    buffer.seek(0)
    restored = EntropyProfile(num_bins=48)  # no spectrum, default configuration: both replaced by the state's
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.get_extra_state() == profile.get_extra_state()
    torch.testing.assert_close(restored.spectrum, profile.spectrum, rtol=0, atol=0)
    torch.testing.assert_close(restored.structure_rate(), profile.structure_rate(), rtol=0, atol=0)
    torch.testing.assert_close(restored.sample(1000, generator=gen(9)), profile.sample(1000, generator=gen(9)),
                               rtol=0, atol=0)
    assert restored.structure_fraction().item() == profile.structure_fraction().item() == 1.0
    # A state without a spectrum removes it; one saved before spectra existed loads as without one.
    restored.load_state_dict(EntropyProfile(num_bins=48).state_dict())
    assert restored.spectrum is None and restored.structure_fraction().item() == 0.0
    old = EntropyProfile(num_bins=48).state_dict()
    for key in ('spectrum', 'structure_nats'):
        del old['_extra_state'][key]
    restored.load_state_dict(old)
    assert restored.spectrum is None
    # set_spectrum later: the same profile as one built with it.
    later = EntropyProfile(num_bins=48)
    later.load_state_dict({**profile.state_dict(), '_extra_state': {**profile.get_extra_state(), 'spectrum': None}})
    later.set_spectrum(profile.spectrum)
    torch.testing.assert_close(later.cdf_knots, profile.cdf_knots, rtol=0, atol=0)


def test_a_state_saved_before_statistics_version_2_resumes_as_if_measured_now():
    # Version 1 summed the errors themselves, with or without a spectrum: what a profile without one sums now.
    # At the bin centres both versions measure the same, so the old state must go on exactly as one measured
    # by this version, its pending sums included: kept in the state, or copied in afterwards from a rank's
    # own state by a resumed run (EDMModule.on_train_start).
    spectrum = torch.tensor([1.0, 0.1, 0.01], dtype=torch.float64)
    profiles = [EntropyProfile(0.01, 10.0, num_bins=8, min_count=1, spectrum=s) for s in (None, spectrum, spectrum)]
    errors_only, current, resumed = profiles
    grid = current.sigma_grid
    for profile in (errors_only, current):
        profile.update(grid.repeat(3), 0.5 * lmmse(grid.repeat(3), spectrum))
        profile.refresh()
        profile.update(grid[[1, 4, 6]], 0.3 * lmmse(grid[[1, 4, 6]], spectrum))  # pending
    old = errors_only.state_dict()
    old['_extra_state'] = {**old['_extra_state'], 'spectrum': spectrum.tolist()}
    del old['_extra_state']['statistics_version']
    resumed.load_state_dict(old)
    torch.testing.assert_close(resumed.structure_rate(), current.structure_rate())
    resumed.pending_sum.copy_(old['pending_sum'])  # as a resumed run does with a rank's own
    loaded, resaved = EntropyProfile(num_bins=8), EntropyProfile(num_bins=8)
    loaded.load_state_dict(old)
    resaved.load_state_dict(loaded.state_dict())  # saved before any update
    assert resaved.get_extra_state()['statistics_version'] == 2
    sigma = grid[[0, 7]] * 1.05
    for profile in (current, resumed, resaved):
        profile.update(sigma, 0.2 * lmmse(sigma, spectrum))
        profile.refresh()
    for profile in (resumed, resaved):
        torch.testing.assert_close(profile.mmse(), current.mmse())
        torch.testing.assert_close(profile.structure_rate(), current.structure_rate())


def test_invalid_spectrum_and_scale_name_the_argument():
    for spectrum in (torch.ones(2, 2), torch.ones(0), torch.tensor([1.0, math.nan])):
        with pytest.raises(ValueError, match='spectrum'):
            EntropyProfile(spectrum=spectrum)
    with pytest.raises(ValueError, match='spectrum'):
        EntropyProfile(dim=3, spectrum=torch.ones(2))
    with pytest.raises(ValueError, match='structure_nats'):
        EntropyProfile(structure_nats=0.0)


def degenerate_profiles():
    grid = EntropyProfile(1.0, math.e ** 2, num_bins=2).sigma_grid
    return dict(never_updated=EntropyProfile(1.0, math.e ** 2, num_bins=2, min_count=1, spectrum=(1.0,)),
                zero_errors=measured([0.0, 0.0]), huge_errors=measured([1e30, 1e30]),
                worse_than_wiener=measured(2 * grid ** 2), constant_data=measured([0.0, 1.0], spectrum=(0.0, 0.0)),
                no_spectrum=measured([0.5, 0.5], spectrum=None))


@pytest.mark.parametrize('name, profile', degenerate_profiles().items())
def test_degenerate_statistics_give_finite_sigmas_and_a_defined_fraction(name, profile):
    p = with_config(profile, density='structure', floor=0.0)
    samples = p.sample(2000, generator=gen(10))
    assert samples.isfinite().all() and (samples >= 1 - 1e-6).all() and (samples <= math.e ** 2 * (1 + 1e-6)).all()
    assert p.log_density(samples.double()).isfinite().all()
    assert_valid_sigmas(p.sigmas(8, kind='structure'), 8, 1.0, math.e ** 2)
    assert_valid_sigmas(p.sigmas(8, kind='structure', sigma_min=0.5, sigma_max=20.0), 8, 0.5, 20.0)
    fraction = p.structure_fraction()
    assert fraction.isfinite() and fraction.item() == (1.0 if name == 'zero_errors' else 0.0)
    if name != 'zero_errors':  # no usable structure: log-uniform
        torch.testing.assert_close(p.cdf_knots, torch.linspace(0, 1, 3, dtype=torch.float64))


def test_profile_figure_draws_the_structure_rate():
    from evaluation import plots

    figure = plots.profile_figure(mixture_profile('ring'))
    labels = [line.get_label() for line in figure.axes[0].lines]
    assert any('structure' in label for label in labels) and any('lmmse' in label for label in labels)
    plots.save(figure, io.BytesIO())
    labels = [line.get_label() for line in plots.profile_figure(EntropyProfile()).axes[0].lines]
    assert not any('structure' in label for label in labels)


# --------------------------------------------------------------------------------------------------
# In training: the module's σ draws, its spectrum, and ranks.

def structure_module(*overrides):
    from config import load_config
    from training.module import EDMModule
    return EDMModule(load_config('configs/toy/default.yaml', ['noise.name=entropic', 'noise.density=structure',
                                                              'noise.warmup_steps=0', *overrides]))


def exact_profile_into(model, seed=0):
    """Replace the module's profile by its data's exact one (the mixture's own denoiser), with little
    Monte Carlo error: the noise of the integrated structure rate is about 0.04/sqrt(samples/4096) nats."""
    mixture, g = model.dataset.mixture, gen(seed)
    exact = EntropyProfile.from_denoiser(mixture, lambda n: mixture.sample(n, generator=g), 0.002, 80.0,
                                         num_points=64, samples_per_point=32768, generator=g, batch_size=1 << 16,
                                         spectrum=model.profile.spectrum, **profile_kwargs(model.config.noise, model.dataset.dim))
    model.profile.load_state_dict(exact.state_dict())


def test_module_computes_the_data_spectrum_once_and_identically():
    model = structure_module()
    exact = torch.linalg.eigvalsh(model.dataset.mixture.covariance()).flip(0)
    # 65536 points: the sampling error of an eigenvalue is about sqrt(2/n) relative.
    torch.testing.assert_close(model.profile.spectrum, exact, rtol=0.02, atol=0)
    assert torch.equal(structure_module().profile.spectrum, model.profile.spectrum)


def test_structure_sampler_falls_back_to_the_base_distribution_on_gaussian_data():
    model = structure_module('data.name=gmm', 'data.weights=[1.0]', 'data.means=[[0.3,-0.2]]',
                             'data.covs=[[[0.3,0.1],[0.1,0.2]]]')
    exact_profile_into(model)
    assert model.profile.structure_fraction() < 0.01
    log_sigma = model.noise.sample(20000, generator=gen(1)).log().numpy()
    # The base is EDM's lognormal: log σ ~ N(P_mean, P_std²).
    assert scipy.stats.kstest(log_sigma, 'norm', args=(-1.2, 1.2)).pvalue > 0.01
    assert torch.allclose(model.noise.log_density(torch.tensor([0.01, 0.3, 3.0])),
                          model.noise.base.log_density(torch.tensor([0.01, 0.3, 3.0])), atol=0.05)


def test_structure_sampler_draws_from_the_structure_density_on_the_ring():
    model = structure_module()
    exact_profile_into(model)
    assert model.profile.structure_fraction() == 1
    sigma = model.noise.sample(20000, generator=gen(1))
    cdf = model.profile.cdf(sigma.double()).numpy()
    assert scipy.stats.kstest(cdf, 'uniform').pvalue > 0.01  # inverse-CDF draws: uniform under their own CDF
    torch.testing.assert_close(model.noise.log_density(sigma[:100]), model.profile.log_density(sigma[:100]))


def _structure_profile_on_rank(rank, world_size, directory):
    torch.distributed.init_process_group('gloo', init_method=f'file://{directory}/init', rank=rank,
                                         world_size=world_size)
    model = structure_module()
    sigma = torch.logspace(-2, 1, 64)
    model.profile.update(sigma, 0.5 * model.profile.lmmse()[1].new_tensor(  # each rank its own errors
        [float(rank + 1)]).expand(64) * sigma ** 2 / (1 + sigma ** 2))
    model.profile.refresh()
    torch.save(model.profile.state_dict(), f'{directory}/{rank}.pt')
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_hold_identical_structure_profiles(tmp_path):
    torch.multiprocessing.start_processes(_structure_profile_on_rank, args=(2, tmp_path), nprocs=2, start_method='fork')
    states = [torch.load(tmp_path / f'{rank}.pt', weights_only=True) for rank in range(2)]
    profiles = [EntropyProfile(num_bins=64) for _ in states]
    for profile, state in zip(profiles, states):
        profile.load_state_dict(state)
    assert profiles[0].get_extra_state() == profiles[1].get_extra_state()
    assert profiles[0].get_extra_state()['spectrum'] is not None
    assert torch.equal(profiles[0].cdf_knots, profiles[1].cdf_knots)
    assert torch.equal(profiles[0].structure_fraction(), profiles[1].structure_fraction())
