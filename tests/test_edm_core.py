"""Preconditioning, loss and σ distributions against the EDM paper's formulas."""

import math

import numpy as np
import pytest
import scipy.stats
import torch

from networks import EDMPrecond
from networks import MLP
from networks import VEPrecond
from networks import VPPrecond
from networks import build_denoiser
from config import NetworkConfig, PrecondConfig
from training.loss import edm_loss
from training.noise import LogisticLogSNR, LogNormal, LogUniform

SIGMAS = torch.tensor([0.002, 0.05, 0.5, 1.0, 7.0, 80.0], dtype=torch.float64)


class Zero(torch.nn.Module):
    """F ≡ 0, recording what it was called with."""

    def forward(self, x, c_noise):
        self.x_in, self.c_noise = x, c_noise
        return torch.zeros_like(x)


class Ones(Zero):
    def forward(self, x, c_noise):
        super().forward(x, c_noise)
        return torch.ones_like(x)


def test_edm_coefficients_match_the_paper():
    sd = 0.5
    p = EDMPrecond(Zero(), sigma_data=sd)
    for s in SIGMAS.tolist():
        t = torch.tensor(s, dtype=torch.float64)
        assert p.c_skip(t).item() == pytest.approx(sd ** 2 / (s ** 2 + sd ** 2))
        assert p.c_out(t).item() == pytest.approx(s * sd / math.sqrt(s ** 2 + sd ** 2))
        assert p.c_in(t).item() == pytest.approx(1 / math.sqrt(s ** 2 + sd ** 2))
        assert p.c_noise(t).item() == pytest.approx(math.log(s) / 4)
        assert p.loss_weight(t).item() == pytest.approx((s ** 2 + sd ** 2) / (s * sd) ** 2)


def test_vp_and_ve_coefficients():
    vp, ve = VPPrecond(Zero()), VEPrecond(Zero())
    for s in SIGMAS.tolist():
        t = torch.tensor(s, dtype=torch.float64)
        # VP: σ(t) = sqrt(exp(β_d t²/2 + β_min t) − 1); c_noise = (M − 1) t must invert it.
        time = vp.c_noise(t).item() / 999
        assert math.sqrt(math.exp(0.5 * 19.9 * time ** 2 + 0.1 * time) - 1) == pytest.approx(s, rel=1e-9)
        assert (vp.c_skip(t).item(), vp.c_out(t).item()) == (1.0, pytest.approx(-s))
        assert vp.c_in(t).item() == pytest.approx(1 / math.sqrt(s ** 2 + 1))
        assert (ve.c_skip(t).item(), ve.c_out(t).item(), ve.c_in(t).item()) == (1.0, pytest.approx(s), 1.0)
        assert ve.c_noise(t).item() == pytest.approx(math.log(0.5 * s))
        for p in (vp, ve):
            assert p.loss_weight(t).item() == pytest.approx(1 / s ** 2)


def test_forward_combines_skip_and_output():
    net = Ones()
    p = EDMPrecond(net, sigma_data=0.5)
    x = torch.randn(6, 2, dtype=torch.float64)
    out = p(x, SIGMAS)
    s = SIGMAS[:, None]
    expected = 0.25 / (s ** 2 + 0.25) * x + s * 0.5 / (s ** 2 + 0.25).sqrt()
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(net.x_in, x / (s ** 2 + 0.25).sqrt())
    torch.testing.assert_close(net.c_noise, SIGMAS.log() / 4)
    # A scalar σ is broadcast over the batch.
    torch.testing.assert_close(p(x, 0.5), p(x, torch.full((6,), 0.5, dtype=torch.float64)))


def test_loss_matches_formula_and_reports_unweighted_error():
    torch.manual_seed(0)
    denoiser = build_denoiser(NetworkConfig(width=16, depth=2), PrecondConfig(), shape=(2,))
    x0 = torch.randn(8, 2)
    sigma = torch.logspace(-2, 1, 8)
    loss, sq_err = edm_loss(denoiser, x0, sigma, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    d = denoiser(x0 + sigma[:, None] * noise, sigma)
    expected_err = (d - x0).square().sum(1)
    torch.testing.assert_close(sq_err, expected_err)
    weight = (sigma ** 2 + 0.25) / (sigma * 0.5) ** 2
    torch.testing.assert_close(loss, weight * expected_err / 2)


def test_mlp_shapes_and_sigma_conditioning():
    net = MLP(dim=2, width=32, depth=3)
    x = torch.randn(5, 2)
    assert net(x, torch.zeros(5)).shape == (5, 2)
    assert not torch.allclose(net(x, torch.zeros(5)), net(x, torch.ones(5)))


def _log_sigma_integral(dist):
    grid = torch.linspace(math.log(1e-5), math.log(1e5), 200001, dtype=torch.float64)
    return torch.trapezoid(dist.log_density(grid.exp()).exp(), grid).item()


@pytest.mark.parametrize('dist', [LogNormal(-1.2, 1.2), LogUniform(0.002, 80), LogisticLogSNR(1.0, 2.0)])
def test_log_density_is_normalised_per_log_sigma(dist):
    assert _log_sigma_integral(dist) == pytest.approx(1.0, abs=2e-3)


def test_samples_follow_the_stated_laws():
    g = lambda: torch.Generator().manual_seed(0)
    log_sigma = LogNormal(-1.2, 1.2).sample(20000, generator=g()).log().numpy()
    assert scipy.stats.kstest(log_sigma, 'norm', args=(-1.2, 1.2)).pvalue > 1e-3
    log_sigma = LogUniform(0.002, 80).sample(20000, generator=g()).log().numpy()
    a, b = math.log(0.002), math.log(80)
    assert scipy.stats.kstest(log_sigma, 'uniform', args=(a, b - a)).pvalue > 1e-3
    log_snr = -2 * LogisticLogSNR(1.0, 2.0).sample(20000, generator=g()).log().numpy()
    assert scipy.stats.kstest(log_snr, 'logistic', args=(1.0, 2.0)).pvalue > 1e-3
    # ...and the test can fail: lognormal draws are not log-uniform.
    log_sigma = LogNormal(-1.2, 1.2).sample(20000, generator=g()).log().numpy()
    assert scipy.stats.kstest(log_sigma, 'uniform', args=(a, b - a)).pvalue < 1e-6


def test_draws_are_reproducible_from_the_generator():
    d = LogNormal()
    a = d.sample(10, generator=torch.Generator().manual_seed(5))
    b = d.sample(10, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not torch.equal(a, d.sample(10, generator=torch.Generator().manual_seed(6)))


def test_learning_rate_warms_up_then_decays_like_edm2():
    from training.module import learning_rate_factor
    assert learning_rate_factor(0, warmup_steps=100) == pytest.approx(0.01)
    assert learning_rate_factor(99, warmup_steps=100) == 1 == learning_rate_factor(10**6, warmup_steps=100)
    assert learning_rate_factor(999, warmup_steps=100, ref_steps=1000) == 1
    assert learning_rate_factor(3999, warmup_steps=100, ref_steps=1000) == pytest.approx(0.5)  # 1/sqrt(4)


def test_loss_bins_hold_the_mean_loss_of_each_log_sigma_bin():
    from training.module import SigmaBins
    g = torch.Generator().manual_seed(0)
    sigma = (math.log(1e-3) + math.log(1e5) * torch.rand(5000, generator=g)).exp()
    loss = torch.rand(5000, generator=g) + sigma.log()
    bins = SigmaBins(1e-3, 1e2, num_bins=25)
    bins.update(sigma[:1234], loss[:1234])
    bins.update(sigma[1234:], loss[1234:])
    centres, means = bins.pop()
    index = np.clip(np.floor((np.log(sigma.numpy()) - math.log(1e-3)) / (math.log(1e5) / 25)), 0, 24).astype(int)
    expected = [loss.numpy()[index == k].mean() for k in range(25)]
    np.testing.assert_allclose(means.numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(centres.log().numpy(), math.log(1e-3) + math.log(1e5) / 25 * (np.arange(25) + 0.5), rtol=1e-6)
    assert bins.pop()[1].isnan().all()  # popped: empty again
