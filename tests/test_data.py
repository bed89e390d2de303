import math

import pytest
import torch

from config import DataConfig
from datasets import build_dataset

NAMES = ['ring', 'moons', 'swissroll', 'checkerboard', 'tree']


@pytest.mark.parametrize('name', NAMES)
def test_shapes_scale_and_reproducibility(name):
    data = build_dataset(DataConfig(name=name))
    x = data.sample(4000, generator=torch.Generator().manual_seed(0))
    assert x.shape == (4000, 2) and x.dtype == torch.float32 and torch.isfinite(x).all()
    # Roughly EDM's sigma_data = 0.5 scale: neither collapsed nor huge.
    assert 0.25 < x.std(0).mean() < 1.2
    assert torch.equal(x, data.sample(4000, generator=torch.Generator().manual_seed(0)))


@pytest.mark.parametrize('name', ['ring', 'moons', 'swissroll', 'tree'])
def test_mixture_datasets_sample_their_own_mixture(name):
    data = build_dataset(DataConfig(name=name))
    x = data.sample(20000, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(x.mean(0), data.mixture.mean().float(), atol=0.03, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), data.mixture.covariance().float(), atol=0.03, rtol=0)


def test_checkerboard_lies_on_dark_squares():
    data = build_dataset(DataConfig(name='checkerboard'))
    x = data.sample(5000, generator=torch.Generator().manual_seed(0))
    cells = ((x + 1) * 2).floor().long()
    assert x.abs().max() <= 1 and ((cells[:, 0] + cells[:, 1]) % 2 == 0).all()
    assert data.mixture is None and data.reference_denoiser() is not None


def test_gmm_from_config_isotropic_and_full():
    iso = build_dataset(DataConfig(name='gmm', weights=[0.25, 0.75], means=[[0, 0], [2, 0]], stds=[0.1, 0.2]))
    full = build_dataset(DataConfig(name='gmm', weights=[0.25, 0.75], means=[[0, 0], [2, 0]],
                                    covs=[[[0.01, 0], [0, 0.01]], [[0.04, 0], [0, 0.04]]]))
    x = torch.tensor([[0.1, 0.0], [1.9, 0.3]])
    torch.testing.assert_close(iso.mixture.log_prob(x), full.mixture.log_prob(x))
    # The exact density of the first point is dominated by the first component.
    expected = math.log(0.25) - math.log(2 * math.pi * 0.01) - 0.5 * 0.01 / 0.01
    assert iso.mixture.log_prob(x)[0].item() == pytest.approx(expected, abs=1e-3)


def test_tree_has_structure_at_several_scales():
    mixture = build_dataset(DataConfig(name='tree', depth=6)).mixture
    assert mixture.num_components == 2 ** 6 - 1
    sizes = torch.linalg.eigvalsh(mixture.covs).max(1).values.sqrt()
    assert sizes.max() / sizes.min() > 5  # branches shrink with depth
