"""2D toy data, drawn fresh every step on the training device (no DataLoader).

Every dataset but the checkerboard is an exact Gaussian mixture (`.mixture`), so its density,
score and ideal denoiser are known: the curves (moons, swiss roll) are chains of small Gaussians
spaced closer than their width. The checkerboard has no exact denoiser; its reference is the
ideal denoiser of a large sample (`PointSet`).
"""

import math

import torch

from datasets.mixture import GaussianMixture, PointSet



class MixtureData:
    """Data drawn from an exact `GaussianMixture`."""

    def __init__(self, name, mixture):
        self.name, self.mixture, self.dim = name, mixture, mixture.dim
        self.shape = (self.dim,)

    def to(self, device):
        self.mixture = self.mixture.to(device)
        return self

    def sample(self, n, generator=None):
        return self.mixture.sample(n, generator=generator)

    def reference_denoiser(self, generator=None):
        return self.mixture


class Checkerboard:
    """Uniform on the dark squares of a 4×4 board covering [−1, 1]²."""

    name, mixture, dim, shape = 'checkerboard', None, 2, (2,)

    def __init__(self):
        self.device = torch.device('cpu')

    def to(self, device):
        self.device = torch.device(device)
        return self

    def sample(self, n, generator=None):
        u = torch.rand(n, 2, generator=generator, device=self.device)
        cell = torch.randint(0, 8, (n,), generator=generator, device=self.device)
        row = cell // 2
        col = 2 * (cell % 2) + (row % 2)  # dark squares: row + col even
        return (torch.stack([col, row], 1) + u) / 2 - 1

    def reference_denoiser(self, generator=None, num_points=20000):
        return PointSet(self.sample(num_points, generator=generator))


def ring(num=8, radius=1.0, std=0.05):
    angles = torch.arange(num) * 2 * math.pi / num
    means = radius * torch.stack([angles.cos(), angles.sin()], 1)
    return GaussianMixture.isotropic(torch.ones(num), means, torch.full((num,), std))


def _chain(points, std):
    """Equal-weight isotropic Gaussians along a polyline of closely spaced points."""
    return torch.ones(len(points)), points, torch.full((len(points),), std)


def moons(num_per_moon=100, std=0.05):
    t = torch.linspace(0, math.pi, num_per_moon)
    upper = torch.stack([t.cos(), t.sin()], 1)
    lower = torch.stack([1 - t.cos(), 0.5 - t.sin()], 1)
    points = (torch.cat([upper, lower]) - torch.tensor([0.5, 0.25])) / 1.2
    return GaussianMixture.isotropic(*_chain(points, std))


def swissroll(num=200, std=0.04):
    # Arc length grows like t², so space components by arc length, not by t.
    s = torch.linspace(0, 1, num)
    t = torch.sqrt((1.5 * math.pi) ** 2 + s * ((4.5 * math.pi) ** 2 - (1.5 * math.pi) ** 2))
    points = torch.stack([t * t.cos(), t * t.sin()], 1) / 12
    return GaussianMixture.isotropic(*_chain(points, std))


def tree(depth=6, branch_angle=math.radians(32), length_ratio=0.62, width_ratio=0.06):
    """A recursive binary branching of elongated Gaussians: each branch is a Gaussian along its
    segment (std a quarter of its length lengthwise, `width_ratio` of it across), and splits into
    two children ±`branch_angle` off its direction, `length_ratio` as long. Structure at every
    scale; weights ∝ segment length, so each level holds a comparable share of the mass.
    """
    weights, means, covs = [], [], []

    def grow(start, direction, length, level):
        end = start + length * direction
        normal = torch.tensor([-direction[1], direction[0]])
        basis = torch.stack([direction, normal], 1)
        scales = torch.tensor([length / 4, width_ratio * length]) ** 2
        weights.append(length)
        means.append((start + end) / 2)
        covs.append(basis @ torch.diag(scales) @ basis.T)
        if level + 1 < depth:
            for sign in (-1, 1):
                c, s = math.cos(sign * branch_angle), math.sin(sign * branch_angle)
                rotated = torch.stack([c * direction[0] - s * direction[1], s * direction[0] + c * direction[1]])
                grow(end, rotated, length * length_ratio, level + 1)

    grow(torch.tensor([0.0, -1.2]), torch.tensor([0.0, 1.0]), 1.0, 0)
    return GaussianMixture(torch.tensor(weights), torch.stack(means), torch.stack(covs))
