"""Sample-quality metrics against closed forms."""

import math

import pytest
import torch

from datasets.mixture import GaussianMixture
from evaluation.metrics import mixture_nll, mmd, sample_metrics, sliced_wasserstein


def normal(n, d, seed):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def swd(x, y, num_projections=256):
    return sliced_wasserstein(x, y, num_projections=num_projections, generator=torch.Generator().manual_seed(0))


def test_swd_of_a_set_with_itself_and_its_copies_is_zero():
    x = normal(500, 3, 0)
    assert swd(x, x) < 1e-12
    # The empirical distribution of x and of x listed twice are the same (n != m).
    assert swd(x, torch.cat([x, x])) < 1e-12
    assert swd(x, torch.cat([x, x[:1]])) > 0


@pytest.mark.parametrize('shift', [0.5, 2.0])
def test_swd_of_a_shift_in_one_dimension(shift):
    # In 1-D, W2(N(0,1), N(a,1)) = |a|; unequal sample sizes.
    x, y = normal(4000, 1, 0), normal(3000, 1, 1) + shift
    assert swd(x, y, num_projections=4) == pytest.approx(shift, abs=0.05)


def test_swd_of_a_shift_in_two_dimensions():
    # A shift a in d dimensions projects to ⟨a, u⟩: SW2² = E⟨a, u⟩² = |a|²/d.
    x = normal(1000, 2, 0)
    a = torch.tensor([0.6, 0.8])
    assert swd(x, x + a, num_projections=512) == pytest.approx(1 / math.sqrt(2), rel=0.03)
    y = normal(2000, 2, 1)
    distances = [swd(x, y + s * a) for s in (0.0, 0.2, 0.5, 1.0, 2.0)]
    assert distances == sorted(distances)


def test_mmd_separates_distributions():
    # Same distribution: unbiased, so ≈ 0 of either sign, std ≈ 0.002 at these sizes.
    assert all(abs(mmd(normal(1000, 2, s), normal(800, 2, s + 100))) < 0.006 for s in range(3))
    x, y = normal(1000, 2, 0), normal(1000, 2, 1)
    assert mmd(x, 1.3 * y) > 0.02  # measured 0.040
    assert mmd(x, y + torch.tensor([0.5, 0.0])) > mmd(x, y + torch.tensor([0.2, 0.0])) > 0.01  # 0.060, 0.015
    assert mmd(x, x[:10]) == pytest.approx(mmd(x[:10], x))


def test_mmd_closed_form_for_two_points():
    # One bandwidth h, x = {0, 0}, y = {1, 1} in 1-D: k_xx = k_yy = 1, k_xy = exp(−1/(2h²)).
    x, y = torch.zeros(2, 1), torch.ones(2, 1)
    assert mmd(x, y, bandwidths=(0.7,)) == pytest.approx(2 - 2 * math.exp(-1 / (2 * 0.49)))


def test_mixture_nll_is_the_entropy():
    # Well separated components: H = log K + H(component), H(N(μ, c²I_2)) = log(2πe c²).
    angles = torch.arange(8) * 2 * math.pi / 8
    mixture = GaussianMixture.isotropic(torch.ones(8), torch.stack([angles.cos(), angles.sin()], 1), torch.full((8,), 0.02))
    entropy = math.log(8) + math.log(2 * math.pi * math.e * 0.02 ** 2)
    x = mixture.sample(20000, generator=torch.Generator().manual_seed(0))
    assert mixture_nll(mixture, x) == pytest.approx(entropy, abs=0.03)  # MC error ≈ 0.007
    # Samples from elsewhere are less likely than the mixture's own.
    assert mixture_nll(mixture, 1.1 * x) > entropy + 1


def test_sample_metrics_keys():
    angles = torch.arange(8) * 2 * math.pi / 8
    mixture = GaussianMixture.isotropic(torch.ones(8), torch.stack([angles.cos(), angles.sin()], 1), torch.full((8,), 0.1))
    x, reference = (mixture.sample(300, generator=torch.Generator().manual_seed(s)) for s in (0, 1))
    assert set(sample_metrics(x, reference)) == {'swd', 'mmd'}
    metrics = sample_metrics(x, reference, mixture=mixture, generator=torch.Generator().manual_seed(0))
    assert set(metrics) == {'swd', 'mmd', 'nll'} and all(isinstance(v, float) for v in metrics.values())
    assert metrics['nll'] == pytest.approx(mixture_nll(mixture, x))
