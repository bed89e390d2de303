"""The exact denoisers against Tweedie's formula, autograd and sampling."""

import math

import pytest
import torch

from datasets.mixture import GaussianMixture, PointSet


def mixture():
    covs = torch.tensor([[[0.04, 0.01], [0.01, 0.02]], [[0.09, 0.0], [0.0, 0.01]], [[0.01, 0.0], [0.0, 0.01]]])
    return GaussianMixture(torch.tensor([0.5, 0.3, 0.2]), torch.tensor([[0.0, 0.0], [1.0, 0.5], [-0.7, 0.8]]), covs)


def autograd_score(m, x, sigma):
    x = x.clone().double().requires_grad_(True)
    (grad,) = torch.autograd.grad(m.log_prob(x, sigma).sum(), x)
    return grad


@pytest.mark.parametrize('sigma', [0.01, 0.1, 0.7, 5.0, 'per-sample'])
def test_denoise_is_tweedie_of_log_prob(sigma):
    m = mixture()
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    if sigma == 'per-sample':
        sigma = torch.logspace(-2, 1, 64, dtype=torch.float64)
    s2 = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1) ** 2
    grad = autograd_score(m, x, sigma)
    torch.testing.assert_close(m.denoise(x, sigma), x + s2 * grad, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(m.score(x, sigma), grad, rtol=1e-6, atol=1e-8)


def test_moments_of_samples():
    m = mixture()
    x = m.sample(200000, generator=torch.Generator().manual_seed(0)).double()
    torch.testing.assert_close(x.mean(0), m.mean(), atol=4e-3, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), m.covariance(), atol=4e-3, rtol=0)


def test_log_prob_integrates_to_one():
    m = mixture()
    g = torch.linspace(-3, 3, 601, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(g, g, indexing='ij'), -1).reshape(-1, 2)
    for sigma in (0.0, 0.3):
        mass = m.log_prob(grid, sigma).exp().sum() * (g[1] - g[0]) ** 2
        assert mass.item() == pytest.approx(1.0, abs=2e-3)


def test_isotropic_constructor_and_single_gaussian_closed_form():
    m = GaussianMixture.isotropic([1.0], [[0.5, -0.5]], [0.3])
    x = torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    sigma = 0.4
    # One Gaussian: E[x0|x] = μ + c²/(c²+σ²)(x − μ); log N with variance c² + σ².
    expected = 0.5 * torch.tensor([1.0, -1.0]) + 0.09 / 0.25 * (x - torch.tensor([0.5, -0.5]))
    torch.testing.assert_close(m.denoise(x, sigma), expected.double())
    logp = -((x - torch.tensor([0.5, -0.5])) ** 2).sum(1) / (2 * 0.25) - math.log(2 * math.pi * 0.25)
    torch.testing.assert_close(m.log_prob(x, sigma), logp.double())


def test_entropy_matches_closed_forms():
    # One anisotropic Gaussian: H = ½ log det(2πe Σ); the Monte Carlo standard error is ~0.003 nats here.
    cov = torch.tensor([[0.5, 0.2], [0.2, 0.3]])
    single = GaussianMixture([1.0], [[1.0, -2.0]], cov[None])
    closed = 0.5 * torch.logdet(2 * math.pi * math.e * cov.double()).item()
    assert single.entropy(generator=torch.Generator().manual_seed(0)) == pytest.approx(closed, abs=0.01)
    # Two far-apart components of weights w: the components' entropy plus the weights' own, −Σ w log w.
    apart = GaussianMixture.isotropic([0.3, 0.7], [[-50.0, 0.0], [50.0, 0.0]], [0.2, 0.2])
    closed = math.log(2 * math.pi * math.e * 0.04) - (0.3 * math.log(0.3) + 0.7 * math.log(0.7))
    assert apart.entropy(generator=torch.Generator().manual_seed(1)) == pytest.approx(closed, abs=0.01)


def test_point_set_equals_a_mixture_of_point_masses():
    points = torch.randn(50, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    p = PointSet(points, chunk_size=7)
    m = GaussianMixture(torch.ones(50), points, torch.zeros(50, 2, 2))
    x = torch.randn(30, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    sigma = torch.logspace(-1.5, 0.5, 30, dtype=torch.float64)
    torch.testing.assert_close(p.denoise(x, sigma), m.denoise(x, sigma))
    torch.testing.assert_close(p.log_prob(x, sigma), m.log_prob(x, sigma))
    torch.testing.assert_close(p.score(x, 0.3), m.score(x, 0.3))
    # Chunking does not change the result.
    torch.testing.assert_close(PointSet(points, chunk_size=1000).denoise(x, sigma), p.denoise(x, sigma))


def test_point_set_keeps_image_shapes_and_memorises():
    points = torch.randn(10, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    p = PointSet(points)
    out = p.denoise(points + 1e-3 * torch.randn_like(points), 1e-2)
    assert out.shape == points.shape and out.dtype == points.dtype
    torch.testing.assert_close(out, points, atol=1e-5, rtol=0)


def test_float32_in_float32_out():
    m = mixture()
    x = m.sample(16, generator=torch.Generator().manual_seed(0))
    sigma = torch.full((16,), 0.5)
    assert x.dtype == torch.float32 and x.shape == (16, 2)
    for out in (m.denoise(x, sigma), m(x, 0.5), m.score(x, torch.tensor(0.5)), m.log_prob(x)):
        assert out.dtype == torch.float32
    torch.testing.assert_close(m(x, sigma), m.denoise(x.double(), 0.5).float())
    assert m.to('cpu') is m and (m.dim, m.num_components) == (2, 3)
