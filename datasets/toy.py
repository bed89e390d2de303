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


def pinwheel(num_arms=5, per_arm=24, radius=1.0, radial_std=0.3, width=0.05, twist=1.0):
    """The pinwheel of Johnson et al. (2016, SVAE) as an exact Gaussian mixture: `num_arms` curved arms,
    arm k along r ↦ r·(cos φ, sin φ), φ = 2πk/num_arms + twist·r, its mass over r the normal N(radius,
    radial_std²). Each arm is a chain of `per_arm` Gaussians at r = radius + radial_std·z, z evenly spaced
    in [−2.5, 2.5], weighted by the normal density at z; each is elongated along the curve's tangent (std
    1.5 times the arc length to its neighbour, so the chain is smooth) and `width` across it.
    A held-out set of the entropic-training benchmark: no σ density or setting was chosen on it.
    """
    z = torch.linspace(-2.5, 2.5, per_arm, dtype=torch.float64)
    r = radius + radial_std * z
    weights, means, covs = [], [], []
    for k in range(num_arms):
        phi = 2 * math.pi * k / num_arms + twist * r
        points = r[:, None] * torch.stack([phi.cos(), phi.sin()], 1)
        # d/dr of the curve: (cos φ − r·twist·sin φ, sin φ + r·twist·cos φ).
        tangent = torch.stack([phi.cos() - r * twist * phi.sin(), phi.sin() + r * twist * phi.cos()], 1)
        tangent = tangent / tangent.norm(dim=1, keepdim=True)
        normal = torch.stack([-tangent[:, 1], tangent[:, 0]], 1)
        arc = (points[1:] - points[:-1]).norm(dim=1)
        spacing = torch.cat([arc[:1], torch.maximum(arc[1:], arc[:-1]), arc[-1:]])  # to the farther neighbour
        basis = torch.stack([tangent, normal], 2)  # [n, 2, 2], columns: tangent, normal
        scales = torch.stack([(1.5 * spacing) ** 2, torch.full_like(spacing, width ** 2)], 1)
        weights.append(torch.exp(-0.5 * z ** 2))
        means.append(points)
        covs.append(basis @ torch.diag_embed(scales) @ basis.transpose(1, 2))
    return GaussianMixture(torch.cat(weights), torch.cat(means), torch.cat(covs))


def multiscale(seed=0, levels=3, children=(2, 4), spread=0.8, ratio=0.3, leaf_std=0.03, rms=0.7):
    """A random multi-scale Gaussian mixture drawn from `seed` (its own generator; the global torch
    stream is neither read nor moved): a tree of `levels` levels whose nodes have 2..4 (`children`)
    children offset from their parent by N(0, s²I), s = `spread` at the top and `ratio` times smaller
    at each level below, with random shares of the parent's weight (each uniform in [0.5, 1.5] before
    normalising). The leaves are the components: anisotropic Gaussians of random orientation with axis
    stds `leaf_std`·e^(N(0, 1/4)). The whole is centred and scaled to per-coordinate RMS `rms` (about
    the ring's 0.71), so clusters, sub-clusters and components sit at roughly 0.8, 0.25, 0.07 and 0.03 of
    that scale. A held-out set of the entropic-training benchmark: no σ density or setting was chosen on it.
    """
    generator = torch.Generator().manual_seed(seed)
    f64 = dict(generator=generator, dtype=torch.float64)
    centres, weights, scale = torch.zeros(1, 2, dtype=torch.float64), torch.ones(1, dtype=torch.float64), spread
    for _ in range(levels):
        new_centres, new_weights = [], []
        for centre, weight in zip(centres, weights):
            k = int(torch.randint(children[0], children[1] + 1, (1,), generator=generator))
            new_centres.append(centre + scale * torch.randn(k, 2, **f64))
            shares = 0.5 + torch.rand(k, **f64)
            new_weights.append(weight * shares / shares.sum())
        centres, weights, scale = torch.cat(new_centres), torch.cat(new_weights), scale * ratio
    n = len(centres)
    angles = 2 * math.pi * torch.rand(n, **f64)
    stds = leaf_std * torch.exp(0.5 * torch.randn(n, 2, **f64))
    basis = torch.stack([torch.stack([angles.cos(), angles.sin()], 1),
                         torch.stack([-angles.sin(), angles.cos()], 1)], 2)
    covs = basis @ torch.diag_embed(stds ** 2) @ basis.transpose(1, 2)
    mixture = GaussianMixture(weights, centres, covs)
    shift = mixture.mean()
    factor = rms / math.sqrt(mixture.covariance().trace().item() / 2)
    return GaussianMixture(weights, factor * (centres - shift), factor ** 2 * covs)
