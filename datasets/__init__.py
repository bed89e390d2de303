"""Training data, drawn fresh on the training device (no DataLoader), plain torch: 2D toy sets that are
exact Gaussian mixtures (`toy`, `mixture`: density, score and ideal denoiser known) and images
(`images`). Each dataset is a builder of a `DataConfig` registered by name in DATASETS; the config
accepts exactly these names. A new dataset is one function and a `@register('name')`."""

import torch

from .images import ImageData, mnist_5k, tiny_imagenet, torchvision_data
from .mixture import GaussianMixture, PointSet
from .toy import Checkerboard, MixtureData, moons, multiscale, pinwheel, ring, swissroll, tree

DATASETS = {}


def register(name):
    """Register `builder(data_config) -> dataset` under `name` (the config's `data.name`)."""
    def add(builder):
        DATASETS[name] = builder
        return builder
    return add


def build_dataset(data):
    """The dataset of a `DataConfig`."""
    dataset = DATASETS[data.name](data)
    if isinstance(dataset, ImageData):
        dataset.scale = data.scale
    return dataset


register('ring')(lambda data: MixtureData('ring', ring()))
register('moons')(lambda data: MixtureData('moons', moons()))
register('swissroll')(lambda data: MixtureData('swissroll', swissroll()))
register('tree')(lambda data: MixtureData('tree', tree(depth=data.depth)))
register('pinwheel')(lambda data: MixtureData('pinwheel', pinwheel()))
register('multiscale')(lambda data: MixtureData('multiscale', multiscale(seed=data.mixture_seed)))
register('checkerboard')(lambda data: Checkerboard())
register('mnist-5k')(lambda data: mnist_5k(data.resolution))


@register('gmm')
def gaussian_mixture(data):
    """The mixture of `data.weights`, `data.means` and `data.stds` (isotropic) or `data.covs`."""
    weights, means = torch.tensor(data.weights), torch.tensor(data.means)
    if data.stds is not None:
        return MixtureData('gmm', GaussianMixture.isotropic(weights, means, torch.tensor(data.stds)))
    return MixtureData('gmm', GaussianMixture(weights, means, torch.tensor(data.covs)))


def _torchvision(name):
    return lambda data: torchvision_data(name, data.root, download=data.download, resolution=data.resolution, xflip=data.xflip)


for _name in ('mnist', 'cifar10', 'cifar100'):
    register(_name)(_torchvision(_name))
register('tinyimagenet')(lambda data: tiny_imagenet(data.root, download=data.download, resolution=data.resolution,
                                                    xflip=data.xflip))
