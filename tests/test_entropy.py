"""The entropy profile against the closed forms for Gaussian data, Monte Carlo, and its own laws."""

import functools
import io
import math

import numpy as np
import pytest
import scipy.optimize
import scipy.stats
import torch

from datasets import ring
from entropy.profile import EntropyProfile

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
LOG_RANGE = math.log(SIGMA_MAX / SIGMA_MIN)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def gaussian_denoiser(c):
    """E[x0 | x] for x0 ~ N(0, c²I)."""
    return lambda x, sigma: c ** 2 / (c ** 2 + sigma[:, None] ** 2) * x


@functools.lru_cache
def gaussian_profile(d, c):
    g = gen(0)
    return EntropyProfile.from_denoiser(gaussian_denoiser(c), lambda n: c * torch.randn(n, d, generator=g),
                                        SIGMA_MIN, SIGMA_MAX, num_points=48, samples_per_point=131072 // d,
                                        generator=g, batch_size=1 << 17, dim=d)


@pytest.fixture(scope='module')
def ring_profile():
    mixture = ring()
    g = gen(1)
    return EntropyProfile.from_denoiser(mixture, lambda n: mixture.sample(n, generator=g), SIGMA_MIN, SIGMA_MAX,
                                        num_points=64, samples_per_point=4096, generator=g, batch_size=1 << 16,
                                        floor=0.0)


def log_uniform_cdf(log_sigma):
    return np.clip((log_sigma - math.log(SIGMA_MIN)) / LOG_RANGE, 0, 1)


def assert_valid_sigmas(sigmas, num_steps, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX):
    """Strictly decreasing from sigma_max, then 0; the last level above sigma_min (a denoising last step)."""
    assert sigmas.dtype == torch.float64 and sigmas.shape == (num_steps + 1,)
    assert sigmas.isfinite().all() and (sigmas.diff() < 0).all()
    assert (sigmas[0].item(), sigmas[-1].item()) == (sigma_max, 0.0) and sigmas[-2].item() > sigma_min


# --------------------------------------------------------------------------------------------------
# Closed forms for Gaussian data x0 ~ N(0, c²I_d).

@pytest.mark.parametrize('d, c', [(2, 0.5), (8, 2.0)])
def test_gaussian_rate_entropy_and_rescaled_time_match_closed_forms(d, c):
    profile = gaussian_profile(d, c)
    sigma, rate = profile.rate()
    exact_rate = d * c ** 2 / (c ** 2 + sigma ** 2)
    assert (rate / exact_rate - 1).abs().max() < 0.02
    torch.testing.assert_close(profile.rate(per_dim=True)[1], rate / d)
    torch.testing.assert_close(profile.mmse()[1], rate * sigma ** 2)

    _, entropy = profile.entropy()
    exact_entropy = (d * torch.log(sigma / SIGMA_MIN)
                     - d / 2 * torch.log((c ** 2 + sigma ** 2) / (c ** 2 + SIGMA_MIN ** 2)))
    assert (entropy / exact_entropy - 1).abs().max() < 0.02

    _, time = profile.rescaled()
    arctan = lambda s: torch.arctan(torch.as_tensor(s, dtype=torch.float64) / c)
    exact_time = (arctan(sigma) - arctan(SIGMA_MIN)) / (arctan(SIGMA_MAX) - arctan(SIGMA_MIN))
    assert (time - exact_time).abs().max() < 0.005  # of the whole [0, 1] range
    assert (time.diff() > 0).all()


@pytest.mark.parametrize('d, c', [(2, 0.5), (8, 2.0)])
def test_gaussian_sigmas_invert_the_closed_form_times(d, c):
    profile = gaussian_profile(d, c)
    num_steps = 16
    tau = np.linspace(1, 0, num_steps + 1)[:num_steps]  # the levels; the last step is to 0

    rescaled = profile.sigmas(num_steps, kind='rescaled')
    assert_valid_sigmas(rescaled, num_steps)
    a0, a1 = math.atan(SIGMA_MIN / c), math.atan(SIGMA_MAX / c)
    expected = c * np.tan(a0 + tau * (a1 - a0))
    np.testing.assert_allclose(np.log(rescaled[:-1].numpy()), np.log(expected), atol=0.03)

    entropic = profile.sigmas(num_steps, kind='entropic')
    assert_valid_sigmas(entropic, num_steps)
    entropy = lambda s: d * math.log(s / SIGMA_MIN) - d / 2 * math.log((c ** 2 + s ** 2) / (c ** 2 + SIGMA_MIN ** 2))
    total = entropy(SIGMA_MAX)
    expected = [math.exp(scipy.optimize.brentq(lambda u: entropy(math.exp(u)) - t * total,
                                               math.log(SIGMA_MIN), math.log(SIGMA_MAX))) for t in tau[1:]]
    np.testing.assert_allclose(np.log(entropic[1:-1].numpy()), np.log(expected), atol=0.03)
    # Rescaled time spends fewer steps at tiny σ than entropic time (the point of rescaling).
    assert (rescaled[1:-1] > entropic[1:-1]).all()


def test_sigmas_on_a_sub_range_and_beyond_the_grid():
    profile = gaussian_profile(2, 0.5)
    for lo, hi in [(0.01, 10.0), (1e-4, 200.0)]:
        for kind in ('entropic', 'rescaled'):
            assert_valid_sigmas(profile.sigmas(12, kind=kind, sigma_min=lo, sigma_max=hi), 12, lo, hi)
    with pytest.raises(ValueError, match='num_steps'):
        profile.sigmas(1)
    with pytest.raises(ValueError, match='kind'):
        profile.sigmas(8, kind='linear')


def test_final_denoise_lands_on_zero_from_the_profile_and_stops_heun_amplifying_a_denoiser_error():
    """#37: a long Heun step down to σ_min divides the denoiser's error there by σ_min (the slope of its
    correction). By default (final_denoise) the levels are the first num_steps of num_steps + 1 uniform
    in the same time, and the last step to 0 returns the denoiser's output from a level well above σ_min."""
    import sampling

    c = 0.5
    profile = gaussian_profile(2, c)
    plain, fixed = profile.sigmas(6, kind='rescaled', final_denoise=False), profile.sigmas(6, kind='rescaled')
    assert fixed.shape == (7,) and fixed[0] == SIGMA_MAX and fixed[-1] == 0 and (fixed.diff() < 0).all()
    torch.testing.assert_close(fixed[:-1], profile.sigmas(7, kind='rescaled', final_denoise=False)[:-2])
    assert fixed[-2] > 50 * SIGMA_MIN and plain[-2] == SIGMA_MIN
    bias = 1e-3  # a denoiser off by a constant, as a trained one is at small σ
    exact = gaussian_denoiser(c)
    biased = lambda x, sigma: exact(x, sigma) + bias
    x = SIGMA_MAX * torch.randn(4096, 2, generator=gen(), dtype=torch.float64)
    error = {name: ((sampling.heun(biased, x, sigmas) - sampling.heun(exact, x, sigmas)).abs().mean() / bias).item()
             for name, sigmas in (('plain', plain), ('fixed', fixed))}
    assert error['plain'] > 10 * error['fixed']  # here 45 against 3.5 times the bias


def test_logistic_fit_matches_the_gaussian_mmse_curve():
    c = 0.5
    profile = gaussian_profile(2, c)
    loc, scale = profile.fit_logistic()
    # Direct computation: quartiles of the distribution over λ = −2 log σ whose CDF is the normalised
    # closed-form mmse curve on the profile's range of bin centres.
    mmse = lambda u: 1 / (1 + c ** 2 * math.exp(-2 * u))  # ∝ σ²/(c² + σ²) at log σ = u
    lo, hi = profile.log_sigma_grid[[0, -1]].tolist()
    quantile = lambda q: scipy.optimize.brentq(lambda u: (mmse(u) - mmse(lo)) / (mmse(hi) - mmse(lo)) - q, lo, hi)
    q25, q50, q75 = (-2 * quantile(1 - q) for q in (0.25, 0.5, 0.75))
    assert loc == pytest.approx(q50, abs=0.03)
    assert scale == pytest.approx((q75 - q25) / (2 * math.log(3)), abs=0.03)
    # ...which for Gaussian data is the logistic Logistic(−2 log c, 1) itself.
    assert (loc, scale) == (pytest.approx(-2 * math.log(c), abs=0.03), pytest.approx(1.0, abs=0.03))
    with pytest.raises(RuntimeError):
        EntropyProfile().fit_logistic()


# --------------------------------------------------------------------------------------------------
# Online estimate, sampling.

def test_online_estimate_agrees_with_offline_within_monte_carlo_error(ring_profile):
    mixture, g = ring(), gen(2)
    num_bins, per_bin = 64, 4096
    online = EntropyProfile(SIGMA_MIN, SIGMA_MAX, num_bins=num_bins)
    sigmas, errors = [], []
    for _ in range(4):  # several updates, one refresh
        n = num_bins * per_bin // 4
        sigma = (math.log(SIGMA_MIN) + LOG_RANGE * torch.rand(n, generator=g, dtype=torch.float64)).exp().float()
        x0 = mixture.sample(n, generator=g)
        x = x0 + sigma[:, None] * torch.randn(x0.shape, generator=g)
        sq_err = (mixture(x, sigma) - x0).square().sum(1)
        online.update(sigma, sq_err)
        sigmas.append(sigma)
        errors.append(sq_err)
    online.refresh()
    # Per-bin standard errors from the per-sample errors (the offline run draws as many per point).
    sigma, err = torch.cat(sigmas).double(), torch.cat(errors).double()
    index = ((sigma.log() - math.log(SIGMA_MIN)) / online.bin_width).long().clamp(0, num_bins - 1)
    count = torch.bincount(index, minlength=num_bins).double()
    mean = torch.bincount(index, err, minlength=num_bins) / count
    var = torch.bincount(index, err ** 2, minlength=num_bins) / count - mean ** 2
    std_error = (var / count + var / 4096).sqrt()
    torch.testing.assert_close(online.mmse()[1], mean)
    # Averaging over a bin instead of taking its centre biases by at most ~h²/6 ≈ 0.5%, well below this.
    assert ((online.mmse()[1] - ring_profile.mmse()[1]).abs() < 4.5 * std_error).all()


def ks_pvalue(samples, cdf):
    return scipy.stats.kstest(samples.double().log().numpy(), cdf).pvalue


def test_samples_follow_the_profile_density(ring_profile):
    samples = ring_profile.sample(4000, generator=gen(3))
    assert samples.dtype == torch.float32 and samples.isfinite().all()
    assert (samples >= SIGMA_MIN * (1 - 1e-6)).all() and (samples <= SIGMA_MAX * (1 + 1e-6)).all()
    own_cdf = lambda u: ring_profile.cdf(torch.from_numpy(np.exp(u))).numpy()
    assert ks_pvalue(samples, own_cdf) > 0.01
    # The test can fail: the ring's profile is far from log-uniform...
    assert ks_pvalue(samples, log_uniform_cdf) < 1e-6
    # ...and a full floor is log-uniform.
    uniform = with_config(ring_profile, floor=1.0)
    assert ks_pvalue(uniform.sample(4000, generator=gen(3)), log_uniform_cdf) > 0.01
    # Same generator seed, same draws.
    torch.testing.assert_close(ring_profile.sample(100, generator=gen(4)), ring_profile.sample(100, generator=gen(4)))


def fine_log_sigma_grid():
    return torch.linspace(math.log(SIGMA_MIN), math.log(SIGMA_MAX), 100001, dtype=torch.float64)


def with_config(profile, **config):
    """A copy of `profile`'s measurements under another sampling configuration."""
    copy = EntropyProfile(num_bins=profile.num_bins)
    copy.load_state_dict({**profile.state_dict(), '_extra_state': {**profile.get_extra_state(), **config}})
    return copy


@pytest.mark.parametrize('config', [dict(), dict(floor=0.2), dict(gate_c=0.1), dict(density='rescaled', floor=0.05)])
def test_log_density_is_normalised_per_log_sigma(ring_profile, config):
    profile = with_config(ring_profile, **config)
    grid = fine_log_sigma_grid()
    assert torch.trapezoid(profile.log_density(grid.exp()).exp(), grid).item() == pytest.approx(1.0, abs=1e-3)
    assert profile.log_density(torch.tensor([SIGMA_MIN / 2, SIGMA_MAX * 2], dtype=torch.float64)).eq(-math.inf).all()


def test_floor_gate_and_density_shift_mass_as_documented(ring_profile):
    sigma = ring_profile.sigma_grid
    plain = ring_profile.log_density(sigma)
    # Floor: p = (1 − floor)·p_profile + floor·uniform, exactly.
    floored = with_config(ring_profile, floor=0.2).log_density(sigma).exp()
    torch.testing.assert_close(floored, 0.8 * plain.exp() + 0.2 / LOG_RANGE)
    # Gate: the density times σⁿ/(σⁿ + cⁿ), renormalised.
    gated = with_config(ring_profile, gate_c=0.1).log_density(sigma)
    gate = torch.log(sigma ** 3 / (sigma ** 3 + 0.1 ** 3))
    shift = gated - plain - gate
    torch.testing.assert_close(shift, shift.mean().expand_as(shift))
    below = torch.tensor([0.1], dtype=torch.float64)
    assert with_config(ring_profile, gate_c=0.1).cdf(below) < ring_profile.cdf(below) - 0.2
    # Rescaled: the density per log σ is mmse/σ instead of mmse/σ², i.e. σ times the entropic one.
    rescaled = with_config(ring_profile, density='rescaled').log_density(sigma)
    shift = rescaled - plain - sigma.log()
    torch.testing.assert_close(shift, shift.mean().expand_as(shift))
    # Samples see the floor: the share above σ = 1 is (1 − floor)·P_profile + floor·P_uniform.
    top = 1 - ring_profile.cdf(torch.tensor([1.0], dtype=torch.float64)).item()
    expected = 0.8 * top + 0.2 * math.log(SIGMA_MAX) / LOG_RANGE
    share = (with_config(ring_profile, floor=0.2).sample(20000, generator=gen(5)) > 1).double().mean().item()
    assert share == pytest.approx(expected, abs=4 * math.sqrt(expected * (1 - expected) / 20000))


# --------------------------------------------------------------------------------------------------
# Running means, starved bins, degenerate input.

def test_running_mean_weights_refreshes_and_keeps_unseen_bins():
    profile = EntropyProfile(1.0, math.e ** 4, num_bins=4, ema_decay=0.5, min_count=1)
    centre = profile.sigma_grid
    profile.update(centre[[0, 0, 1]], torch.tensor([1.0, 1.0, 5.0]))
    profile.refresh()
    profile.update(centre[[0, 2]], torch.tensor([4.0, 7.0]))
    profile.refresh()
    # Bin 0: (0.5·(1 + 1) + 4)/(0.5·2 + 1); bin 1 saw nothing new and keeps 5; bin 3 is extrapolated.
    torch.testing.assert_close(profile.mmse()[1], torch.tensor([2.5, 5.0, 7.0, 7.0], dtype=torch.float64))
    assert profile.num_refreshes.item() == 2 and profile.pending_count.sum().item() == 0


def test_starved_bins_are_interpolated_in_log_sigma():
    profile = EntropyProfile(1.0, math.e ** 6, num_bins=6, min_count=3)
    centre = profile.sigma_grid
    profile.update(centre[[1] * 3 + [4] * 3 + [2] * 2], torch.tensor([2.0] * 3 + [8.0] * 3 + [100.0] * 2))
    profile.refresh()
    # Bin 2 has 2 < min_count samples: interpolated between bins 1 and 4 like bin 3. Below bin 1 the
    # rate mmse/σ² is held (bins are e apart in σ, so mmse drops by e²); above bin 4 the mmse is held.
    expected = torch.tensor([2.0 * math.exp(-2), 2.0, 4.0, 6.0, 8.0, 8.0], dtype=torch.float64)
    torch.testing.assert_close(profile.mmse()[1], expected)
    sigma, rate = profile.rate()
    torch.testing.assert_close(rate[0], rate[1])


def test_out_of_grid_sigma_is_dropped_and_edges_are_clamped():
    profile = EntropyProfile(0.7, 70.0, num_bins=2, min_count=1)
    edge = torch.tensor([0.7, 70.0], dtype=torch.float32)  # float32(0.7) < 0.7 still counts
    profile.update(torch.cat([edge, torch.tensor([0.5, 200.0])]), torch.tensor([1.0, 3.0, 50.0, 50.0]))
    profile.refresh()
    torch.testing.assert_close(profile.mmse()[1], torch.tensor([1.0, 3.0], dtype=torch.float64))


def degenerate_profiles():
    g = gen(6)
    log_uniform = lambda n: (math.log(SIGMA_MIN) + LOG_RANGE * torch.rand(n, generator=g)).exp()
    zero = EntropyProfile()
    zero.update(log_uniform(5000), torch.zeros(5000))
    one_bin = EntropyProfile()
    one_bin.update(torch.full((100,), 0.3), torch.rand(100, generator=g))
    non_finite = EntropyProfile()
    non_finite.update(log_uniform(4), torch.tensor([math.nan, math.inf, -math.inf, math.nan]))
    partly_zero = EntropyProfile()  # like discrete data: no error at small σ
    sigma = log_uniform(5000)
    partly_zero.update(sigma, torch.where(sigma < 0.1, 0.0, sigma.square()))
    never_updated = EntropyProfile()
    for profile in (zero, one_bin, non_finite, partly_zero, never_updated):
        profile.refresh()
    return dict(zero=zero, one_bin=one_bin, non_finite=non_finite, partly_zero=partly_zero,
                never_updated=never_updated, never_refreshed=EntropyProfile())


@pytest.mark.parametrize('name, profile', degenerate_profiles().items())
def test_degenerate_profiles_still_give_valid_sigmas(name, profile):
    for density in ('entropic', 'rescaled'):
        p = with_config(profile, density=density, floor=0.0)
        samples = p.sample(2000, generator=gen(7))
        assert samples.isfinite().all() and (samples > 0).all()
        assert p.log_density(samples.double()).isfinite().all()
        for kind in ('entropic', 'rescaled'):
            assert_valid_sigmas(profile.sigmas(18, kind=kind), 18)
            # A sub-range where the rate may vanish throughout (partly_zero: σ < 0.1).
            assert_valid_sigmas(profile.sigmas(18, kind=kind, sigma_min=0.003, sigma_max=0.05), 18, 0.003, 0.05)
    if name in ('zero', 'non_finite', 'never_updated', 'never_refreshed'):
        # No usable rate: log-uniform draws and the log-linear discretisation.
        assert ks_pvalue(samples, log_uniform_cdf) > 0.01
        expected = torch.logspace(math.log10(SIGMA_MAX), math.log10(SIGMA_MIN), 19, dtype=torch.float64)[:18]
        torch.testing.assert_close(profile.sigmas(18)[:-1], expected)
    if name == 'one_bin':
        # Extrapolated from the one measured bin: rate held below it, mmse held above it.
        sigma, mmse = profile.mmse()
        measured = int(profile.total_count.argmax())  # the bin holding σ = 0.3
        assert (mmse[measured:] == mmse[measured]).all()
        torch.testing.assert_close(mmse[:measured] / sigma[:measured] ** 2,
                                   (mmse[measured] / sigma[measured] ** 2).expand(measured))


def test_non_finite_errors_are_dropped_and_counted():
    sigma = torch.tensor([0.01, 0.01, 0.01, 1.0, 1.0])
    profile, clean = EntropyProfile(min_count=1), EntropyProfile(min_count=1)
    profile.update(sigma, torch.tensor([1e-4, math.nan, math.inf, 0.5, -math.inf]))
    clean.update(sigma[[0, 3]], torch.tensor([1e-4, 0.5]))
    for p in (profile, clean):
        p.refresh()
    assert profile.num_dropped.item() == 3
    torch.testing.assert_close(profile.mmse()[1], clean.mmse()[1])
    assert profile.mmse()[1].isfinite().all()
    assert EntropyProfile().mmse()[1].isnan().all()  # uninitialised, and says so


def test_pending_sums_do_not_depend_on_how_updates_are_split():
    # What lets training bin the errors of many steps at once, and a run resumed at any step match one
    # that never stopped: errors spanning nine decades, some dropped, added in one call or in uneven parts.
    g = gen(11)
    sigma = (math.log(SIGMA_MIN) - 1 + (LOG_RANGE + 2) * torch.rand(20000, generator=g)).exp()
    sq_err = torch.rand(20000, generator=g) * 10.0 ** torch.randint(-6, 4, (20000,), generator=g)
    sq_err[::997] = math.nan
    whole, parts = EntropyProfile(), EntropyProfile()
    whole.update(sigma, sq_err)
    for start, stop in ((0, 1), (1, 512), (512, 7001), (7001, 20000)):
        parts.update(sigma[start:stop], sq_err[start:stop])
    for name in ('pending_sum', 'pending_count', 'num_dropped'):
        assert torch.equal(getattr(whole, name), getattr(parts, name)), name
    assert whole.pending_count.sum().item() < 20000 - 20 and whole.num_dropped.item() == 21  # off-grid and NaN dropped


# --------------------------------------------------------------------------------------------------
# State, configuration.

def test_state_dict_round_trip_reproduces_the_profile_exactly(ring_profile):
    profile = with_config(ring_profile, floor=0.1, gate_c=0.05, density='rescaled')
    profile.update(torch.tensor([0.1, 1.0]), torch.tensor([0.01, 0.3]))  # pending, not yet refreshed
    buffer = io.BytesIO()
    torch.save(profile.state_dict(), buffer)
    buffer.seek(0)
    restored = EntropyProfile(num_bins=64)  # default configuration, replaced by the state's
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.get_extra_state() == profile.get_extra_state()
    torch.testing.assert_close(restored.sample(1000, generator=gen(8)), profile.sample(1000, generator=gen(8)),
                               rtol=0, atol=0)
    torch.testing.assert_close(restored.sigmas(18), profile.sigmas(18), rtol=0, atol=0)
    for p in (profile, restored):
        p.refresh()
    torch.testing.assert_close(restored.mmse(), profile.mmse(), rtol=0, atol=0)
    assert restored.num_refreshes.item() == profile.num_refreshes.item() == 2
    assert not list(profile.parameters())


@pytest.mark.parametrize('kwargs, name', [
    (dict(sigma_min=1.0, sigma_max=1.0), 'sigma_min'), (dict(num_bins=1), 'num_bins'),
    (dict(ema_decay=1.0), 'ema_decay'), (dict(min_count=0), 'min_count'), (dict(floor=1.5), 'floor'),
    (dict(gate_c=0.0), 'gate_c'), (dict(gate_n=-1.0), 'gate_n'), (dict(density='flat'), 'density'),
    (dict(dim=0), 'dim'),
])
def test_invalid_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        EntropyProfile(**kwargs)


def test_per_dim_rate_needs_dim():
    with pytest.raises(ValueError, match='per_dim'):
        EntropyProfile().rate(per_dim=True)


def test_sampling_from_a_tensor_of_data_points():
    points = 0.5 * torch.randn(4096, 2, generator=gen(9))
    profile = EntropyProfile.from_denoiser(gaussian_denoiser(0.5), points, num_points=16, samples_per_point=512,
                                           generator=gen(10))
    sigma, rate = profile.rate()
    exact = 2 * 0.25 / (0.25 + sigma ** 2)
    assert (rate / exact - 1).abs().max() < 0.2
    assert profile.total_count.sum().item() == 16 * 512


def test_logistic_fit_uses_the_monotone_envelope_of_a_noisy_curve():
    noisy, monotone = (EntropyProfile(1.0, math.e ** 5, num_bins=5, min_count=1) for _ in range(2))
    for profile, mmse in ((noisy, [0.0, 1.0, 3.0, 2.0, 4.0]), (monotone, [0.0, 1.0, 3.0, 3.0, 4.0])):
        profile.update(profile.sigma_grid, torch.tensor(mmse))
        profile.refresh()
    assert noisy.fit_logistic() == monotone.fit_logistic()


def _refresh_on_rank(rank, world_size, directory):
    torch.distributed.init_process_group('gloo', init_method=f'file://{directory}/init', rank=rank,
                                         world_size=world_size)
    profile = EntropyProfile(1.0, math.e ** 2, num_bins=2, min_count=1)
    profile.update(profile.sigma_grid[[rank]], torch.tensor([float(rank + 1)]))  # each rank sees one bin
    profile.refresh()
    torch.save(profile.state_dict(), f'{directory}/{rank}.pt')
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_refresh_sums_over_ranks(tmp_path):
    torch.multiprocessing.start_processes(_refresh_on_rank, args=(2, tmp_path), nprocs=2,
                                          start_method='fork')  # fork: no re-import, fast
    profiles = [EntropyProfile(num_bins=2) for _ in range(2)]
    for rank, profile in enumerate(profiles):
        profile.load_state_dict(torch.load(tmp_path / f'{rank}.pt', weights_only=True))
    assert profiles[0].mmse()[1].tolist() == profiles[1].mmse()[1].tolist() == [1.0, 2.0]
