"""σ schedules and solvers, checked against the exact denoiser of a 2D Gaussian mixture."""

import math

import pytest
import torch

import sampling
from datasets.mixture import GaussianMixture
from sampling import SOLVERS, euler, heun, karras_sigmas, loglinear_sigmas, vp_sigmas
from evaluation.metrics import sliced_wasserstein


def ring():
    """8 Gaussians of std 0.1 on the unit circle."""
    angles = torch.arange(8) * 2 * math.pi / 8
    return GaussianMixture.isotropic(torch.ones(8), torch.stack([angles.cos(), angles.sin()], 1), torch.full((8,), 0.1))


def noise(n, seed=0, dtype=torch.float32):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=dtype)


class CountingDenoiser:
    """Wraps a denoiser, counting calls and checking that σ arrives as a [batch] tensor in x's dtype."""

    def __init__(self, denoiser):
        self.denoiser, self.calls = denoiser, 0

    def __call__(self, x, sigma):
        assert sigma.shape == (len(x),) and sigma.dtype == x.dtype
        self.calls += 1
        return self.denoiser(x, sigma)


# ---------------------------------------------------------------- schedules
@pytest.mark.parametrize('schedule', [karras_sigmas, loglinear_sigmas])
def test_schedule_endpoints(schedule):
    sigmas = schedule(18)
    assert sigmas.shape == (19,) and sigmas.dtype == torch.float64
    assert sigmas[0].item() == pytest.approx(80.0) and sigmas[-2].item() == pytest.approx(0.002)
    assert sigmas[-1] == 0 and (sigmas.diff() < 0).all()
    torch.testing.assert_close(schedule(1), torch.tensor([80.0, 0.0], dtype=torch.float64))


def test_karras_spacing_between_linear_and_geometric():
    # ρ = 1 is uniform in σ; ρ → ∞ tends to uniform in log σ.
    linear = torch.linspace(80, 0.002, 10, dtype=torch.float64)
    torch.testing.assert_close(karras_sigmas(10, rho=1)[:-1], linear)
    torch.testing.assert_close(karras_sigmas(10, rho=1e5), loglinear_sigmas(10), rtol=1e-3, atol=0)
    geometric = loglinear_sigmas(10)[:-1]
    torch.testing.assert_close(geometric[1:] / geometric[:-1], torch.full((9,), (0.002 / 80) ** (1 / 9), dtype=torch.float64))


def test_vp_schedule():
    sigmas = vp_sigmas(18)
    assert sigmas.shape == (19,) and sigmas[-1] == 0 and (sigmas.diff() < 0).all()
    assert sigmas[0].item() == pytest.approx(math.sqrt(math.expm1(19.9 / 2 + 0.1)))  # ≈ 152
    assert sigmas[-2].item() == pytest.approx(math.sqrt(math.expm1(19.9 / 2 * 1e-6 + 0.1 * 1e-3)))  # ≈ 0.01


@pytest.mark.parametrize('schedule, kwargs, name', [
    (karras_sigmas, dict(num_steps=0), 'num_steps'),
    (karras_sigmas, dict(num_steps=2.5), 'num_steps'),
    (loglinear_sigmas, dict(num_steps=True), 'num_steps'),
    (karras_sigmas, dict(num_steps=10, sigma_min=0.0), 'sigma_min'),
    (loglinear_sigmas, dict(num_steps=10, sigma_min=90.0), 'sigma_min'),
    (karras_sigmas, dict(num_steps=10, sigma_max=float('nan')), 'sigma_max'),
    (karras_sigmas, dict(num_steps=10, rho=0.0), 'rho'),
    (vp_sigmas, dict(num_steps=-1), 'num_steps'),
    (vp_sigmas, dict(num_steps=10, epsilon_s=1.5), 'epsilon_s'),
])
def test_schedule_rejects_bad_arguments(schedule, kwargs, name):
    with pytest.raises(ValueError, match=name) as error:
        schedule(**kwargs)
    assert '\n' not in str(error.value)


def test_lookup_by_name():
    torch.testing.assert_close(sampling.get_sigmas('karras', 5, rho=3.0), karras_sigmas(5, rho=3.0))
    with pytest.raises(ValueError, match="unknown schedule 'cosine'; choose from karras, loglinear, vp"):
        sampling.get_sigmas('cosine', 5)
    with pytest.raises(ValueError, match="unknown solver 'rk4'; choose from euler, heun"):
        sampling.sample(ring(), noise(4), karras_sigmas(5), 'rk4')


# ---------------------------------------------------------------- solver mechanics
@pytest.mark.parametrize('solver, nfe', [('euler', 18), ('heun', 35), ('ddim', 18), ('euler_ancestral', 18),
                                         ('dpmpp_2m', 18)])
def test_denoiser_calls(solver, nfe):
    denoiser = CountingDenoiser(ring())
    steps = []
    x = sampling.sample(denoiser, noise(16), karras_sigmas(18), solver, generator=torch.Generator().manual_seed(0),
                        callback=steps.append)
    assert denoiser.calls == nfe and x.dtype == torch.float32
    assert [s['i'] for s in steps] == list(range(18)) and steps[-1]['sigma_next'] == 0
    assert torch.equal(steps[-1]['x'], x) and steps[0]['sigma'] == 80.0


def test_heun_churn_keeps_nfe_and_adds_noise():
    denoiser = CountingDenoiser(ring())
    x0 = noise(64) * 80.0
    churned = heun(denoiser, x0, karras_sigmas(18), S_churn=40, S_min=0.05, S_max=50,
                   generator=torch.Generator().manual_seed(0))
    assert denoiser.calls == 35
    assert not torch.allclose(churned, heun(ring(), x0, karras_sigmas(18)))


def test_ddim_eta_zero_is_euler_exactly():
    x0, sigmas = noise(256) * 80, karras_sigmas(12)
    assert torch.equal(SOLVERS['ddim'](ring(), x0, sigmas, eta=0.0), euler(ring(), x0, sigmas))
    assert not torch.allclose(SOLVERS['ddim'](ring(), x0, sigmas, eta=0.5, generator=torch.Generator().manual_seed(0)),
                              euler(ring(), x0, sigmas))


def test_euler_ancestral_follows_the_generator():
    def run(seed):
        return SOLVERS['euler_ancestral'](ring(), noise(64) * 80, karras_sigmas(10),
                                          generator=torch.Generator().manual_seed(seed))
    assert torch.equal(run(1), run(1))
    assert not torch.allclose(run(1), run(2))


@pytest.mark.parametrize('sigmas, problem', [
    (torch.tensor([[1.0, 0.0]]), '1-D'),
    (torch.tensor([0.0]), 'at least 2'),
    (torch.tensor([2.0, 1.0]), 'end in 0'),
    (torch.tensor([1.0, 2.0, 0.0]), 'decreasing'),
    (torch.tensor([2.0, 2.0, 0.0]), 'decreasing'),
])
@pytest.mark.parametrize('solver', sorted(SOLVERS))
def test_solvers_reject_bad_sigmas(solver, sigmas, problem):
    with pytest.raises(ValueError, match=problem):
        SOLVERS[solver](ring(), noise(4), sigmas)


def test_bad_options():
    with pytest.raises(ValueError, match='eta'):
        SOLVERS['ddim'](ring(), noise(4), karras_sigmas(4), eta=1.5)
    with pytest.raises(TypeError):
        euler(ring(), noise(4), karras_sigmas(4), eta=0.5)  # an option euler does not have


# ---------------------------------------------------------------- solver accuracy
def swd(x, y):
    return sliced_wasserstein(x, y, num_projections=128, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope='module')
def swd_floor():
    """The metric's own noise: reference samples against independent true samples of the same size,
    averaged over 3 sets (≈ 0.04 for 2000 points)."""
    mixture, n = ring(), 2000
    reference = mixture.sample(n, generator=torch.Generator().manual_seed(1))
    floor = sum(swd(mixture.sample(n, generator=torch.Generator().manual_seed(s)), reference) for s in (2, 3, 4)) / 3
    return reference, floor


def sample_ring(solver, num_steps, seed=0):
    return sampling.sample(ring(), noise(2000, seed), karras_sigmas(num_steps), solver,
                           generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize('solver', sorted(SOLVERS))
def test_solver_samples_the_mixture(solver, swd_floor):
    # Working solvers land at 0.6-1.3x the floor at 32 steps; 8 steps already give about 3x.
    reference, floor = swd_floor
    assert swd(sample_ring(solver, 32), reference) < 2 * floor


def test_accuracy_check_catches_broken_samplers(swd_floor):
    reference, floor = swd_floor

    def wrong_sign(denoiser, x, sigmas, **options):
        for sigma, sigma_next in zip(sigmas[:-1].tolist(), sigmas[1:].tolist()):
            x = x - (sigma_next - sigma) * (x - denoiser(x, x.new_full((len(x),), sigma))) / sigma
        return x

    assert swd(sample_ring('euler', 2), reference) > 2 * floor
    assert swd(sample_ring('heun', 2), reference) > 2 * floor
    assert swd(sample_ring(wrong_sign, 32), reference) > 2 * floor


@pytest.fixture(scope='module')
def ode_reference():
    """Start noise [256, 2] (float64) and its ODE endpoint from a 256-step Heun solve."""
    start = noise(256, dtype=torch.float64)
    return start, sampling.sample(ring(), start, karras_sigmas(256), 'heun')


def endpoint_error(ode_reference, solver, num_steps):
    start, reference = ode_reference
    return (sampling.sample(ring(), start, karras_sigmas(num_steps), solver) - reference).norm(dim=1).mean().item()


def test_second_order_solvers_beat_euler_at_equal_nfe(ode_reference):
    # At about 49 denoiser calls: Euler 49 steps, DPM-Solver++(2M) 49 steps, Heun 25 steps.
    euler_error = endpoint_error(ode_reference, 'euler', 49)
    assert endpoint_error(ode_reference, 'dpmpp_2m', 49) < 0.5 * euler_error
    assert endpoint_error(ode_reference, 'heun', 25) < 0.75 * euler_error


def uneven_sigmas(num_steps, sigma_min=0.002, sigma_max=80.0):
    """Steps in log σ alternating in length 1 : 2.5, so that consecutive steps differ (r ≠ 1 in DPM-Solver++)."""
    lengths = torch.tensor([1.0, 2.5], dtype=torch.float64).repeat(num_steps)[:num_steps - 1]
    t = torch.cat([lengths.new_zeros(1), lengths.cumsum(0) / lengths.sum()])
    log_sigma = math.log(sigma_max) + t * (math.log(sigma_min) - math.log(sigma_max))
    return torch.cat([log_sigma.exp(), log_sigma.new_zeros(1)])


@pytest.mark.parametrize('solver, order', [('euler', 1), ('heun', 2), ('dpmpp_2m', 2)])
def test_convergence_order(solver, order):
    # For x0 ~ N(0, c²I) the ODE is linear: x(σ) = x(σ_max) sqrt((c² + σ²)/(c² + σ_max²)). Doubling
    # the steps divides the endpoint error by 2^order in the limit (measured from 64 to 128 steps: 2.00,
    # 4.24, 4.02; Heun 4.47 and DPM-Solver++ 3.82 from 32 to 64, not yet asymptotic). The band is
    # narrow enough to reject a first-order method that is nearly second order at these step counts:
    # Heun with trapezoid weights 0.45/0.55 gives 3.42 from 32 to 64 steps but 2.87 from 64 to 128.
    c = 0.5
    gaussian = GaussianMixture.isotropic([1.0], [[0.0, 0.0]], [c])
    start = noise(64, dtype=torch.float64) * 80
    exact = start * c / math.sqrt(c ** 2 + 80 ** 2)
    errors = [(SOLVERS[solver](gaussian, start, uneven_sigmas(n)) - exact).abs().max() for n in (64, 128)]
    assert 2 ** order * 0.85 < errors[0] / errors[1] < 2 ** order * 1.2


def zero_denoiser(x, sigma):
    """The exact denoiser of a point mass at 0: every x is pure noise."""
    return torch.zeros_like(x)


@pytest.mark.parametrize('solver, options', [('euler', {}), ('heun', {}), ('dpmpp_2m', {}), ('ddim', dict(eta=0.5)),
                                             ('euler_ancestral', {}), ('heun', dict(S_churn=20, S_max=10))])
def test_solvers_keep_the_marginals_of_a_point_mass(solver, options):
    # With D ≡ 0, x ~ N(0, σ²I) at every σ; every step, deterministic or not, must keep that law.
    sigmas = karras_sigmas(8, sigma_max=20.0)
    stds = []
    sampling.sample(zero_denoiser, noise(20000), sigmas, solver, generator=torch.Generator().manual_seed(1),
                    callback=lambda step: stds.append(step['x'].std().item()), **options)
    torch.testing.assert_close(torch.tensor(stds), sigmas[1:].float(), rtol=0.03, atol=1e-6)


@pytest.mark.parametrize('eta', [0.3, 1.0])
def test_ddim_noise_is_eta_times_the_posterior_std(eta):
    # From x = 0 and D ≡ 0 a step from σ to σ_next leaves only the fresh noise, of std
    # η σ_next sqrt(1 − σ_next²/σ²) (DDPM's posterior std at η = 1).
    stds = []
    SOLVERS['ddim'](zero_denoiser, torch.zeros(20000, 2), torch.tensor([2.0, 1.0, 0.0]), eta=eta,
                    generator=torch.Generator().manual_seed(0), callback=lambda step: stds.append(step['x'].std().item()))
    assert stds[0] == pytest.approx(eta * math.sqrt(3) / 2, rel=0.02)


def test_heun_churn_only_between_S_min_and_S_max_and_capped():
    x0, sigmas = noise(64) * 80, karras_sigmas(18)

    def churned(**options):
        return heun(ring(), x0, sigmas, generator=torch.Generator().manual_seed(0), **options)

    assert torch.equal(churned(S_churn=40, S_min=100), heun(ring(), x0, sigmas))
    # γ = min(S_churn/N, √2 − 1): beyond 18(√2 − 1) ≈ 7.5 more churn changes nothing.
    assert torch.equal(churned(S_churn=1000), churned(S_churn=18 * (math.sqrt(2) - 1)))
    assert not torch.equal(churned(S_churn=7), churned(S_churn=18 * (math.sqrt(2) - 1)))


def test_dpmpp_2m_second_step_by_hand():
    # D depends on σ only: 1 at σ = 4, 3 at σ = 2. From x = 0: the first step is first order,
    # x1 = (2/4)·0 + (1 − 2/4)·1 = 0.5; the second extrapolates with r = h_prev/h = log 2/log 4 = 1/2:
    # D̃ = (1 + 1/(2r))·3 − 1/(2r)·1 = 5, x2 = (0.5/2)·0.5 + (1 − 0.5/2)·5 = 3.875.
    values = {4.0: 1.0, 2.0: 3.0, 0.5: 5.0}
    steps = []
    SOLVERS['dpmpp_2m'](lambda x, sigma: torch.full_like(x, values[sigma[0].item()]), torch.zeros(1, 1),
                        torch.tensor([4.0, 2.0, 0.5, 0.0]), callback=lambda step: steps.append(step['x'].item()))
    assert steps == pytest.approx([0.5, 3.875, 5.0])


def test_heun_steps_by_hand():
    # EDM's Algorithm 1 on x0 ~ N(0, 1), whose denoiser is linear: D(x; σ) = x/(1 + σ²), so the slope
    # (x − D)/σ is xσ/(1 + σ²). From x = 1 at σ = 2 to σ = 1: slope 2/5, Euler x̃ = 1 − 0.4 = 0.6, slope
    # there 0.6/2 = 0.3, trapezoid x = 1 − (0.4 + 0.3)/2 = 0.65 (the exact ODE: sqrt(2/5) = 0.632; weights
    # 0.45/0.55 would give 0.655). On to σ = 0 Euler alone: slope 0.65/2, x = 0.65 − 0.325 = 0.325; three
    # denoiser calls in all.
    denoiser = CountingDenoiser(lambda x, sigma: x / (1 + sigma[:, None] ** 2))
    steps = []
    heun(denoiser, torch.ones(1, 1, dtype=torch.float64), torch.tensor([2.0, 1.0, 0.0], dtype=torch.float64),
         callback=lambda step: steps.append(step['x'].item()))
    assert steps == pytest.approx([0.65, 0.325], rel=1e-12) and denoiser.calls == 3


def test_seed_ranges_parse_like_edm():
    assert sampling.parse_seeds('0-4') == [0, 1, 2, 3, 4]
    assert sampling.parse_seeds('7, 1,10-12') == [7, 1, 10, 11, 12]
    for text, message in (('5-2', 'empty range'), ('a-3', 'not a seed'), ('1,1', 'appears twice'), ('-3', 'not a seed'),
                          ('', 'not a seed')):
        with pytest.raises(ValueError, match=message):
            sampling.parse_seeds(text)


def test_seed_generator_gives_each_sample_its_own_stream():
    """Row i of the noise, initial and fresh, depends only on seeds[i]: the same in any batch."""
    mixture, sigmas = ring(), karras_sigmas(6)

    def run(seeds):
        generator = sampling.SeedGenerator(seeds)
        noise = generator.randn((len(seeds), 2))
        return noise, SOLVERS['euler_ancestral'](mixture, noise * 80.0, sigmas, generator=generator)

    noise, x = run(range(10))
    part_noise, part_x = run([3, 4, 5])
    assert torch.equal(noise[3:6], part_noise)
    torch.testing.assert_close(x[3:6], part_x)  # equal up to rounding: the mixture's sums run over the batch
    assert not torch.allclose(run(range(1, 11))[1][:3], x[:3])
