"""Exact denoisers, used as ground truth wherever a trained denoiser is accepted.

`GaussianMixture`: density, score, sampler and E[x0 | x] of a Gaussian mixture noised by the EDM
forward process x = x0 + σ·ε. `PointSet`: the same for the empirical distribution of a finite set
of points: the ideal (memorising) denoiser of a training set.

Both compute in float64 and return the input's dtype; σ is a float or a [n] tensor.
"""

import math

import torch


def _sigma_column(sigma, x):
    """σ as a float64 [n, 1] tensor on x's device."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1, 1)
    return sigma.expand(x.shape[0], 1)


class GaussianMixture:
    """p(x0) = Σ_k w_k N(x0; μ_k, S_k); noised by σ it stays a mixture with covariances S_k + σ²I.

    Each S_k = U_k diag(l_k) U_kᵀ is diagonalised once, so S_k + σ²I is diagonal in that basis for
    every σ and a different σ per sample costs nothing extra.
    """

    def __init__(self, weights, means, covs):
        weights = torch.as_tensor(weights, dtype=torch.float64)
        if weights.ndim != 1 or not (weights > 0).all():
            raise ValueError('GaussianMixture: weights must be a 1-D tensor of positive numbers')
        self.weights = weights / weights.sum()
        self.means = torch.as_tensor(means, dtype=torch.float64).to(weights.device)
        self.covs = torch.as_tensor(covs, dtype=torch.float64).to(weights.device)
        K, d = self.means.shape
        if self.covs.shape != (K, d, d) or len(self.weights) != K:
            raise ValueError(f'GaussianMixture: expected weights [{K}], means [{K},{d}], covs [{K},{d},{d}]')
        eigvals, self.bases = torch.linalg.eigh(0.5 * (self.covs + self.covs.transpose(1, 2)))
        self.eigvals = eigvals.clamp_min(0)  # [K, d]; zero: a point mass along that axis

    @classmethod
    def isotropic(cls, weights, means, stds):
        means = torch.as_tensor(means, dtype=torch.float64)
        stds = torch.as_tensor(stds, dtype=torch.float64)
        eye = torch.eye(means.shape[1], dtype=torch.float64)
        return cls(weights, means, stds[:, None, None] ** 2 * eye)

    @property
    def dim(self):
        return self.means.shape[1]

    @property
    def num_components(self):
        return self.means.shape[0]

    @property
    def device(self):
        return self.means.device

    def to(self, device):
        for name in ('weights', 'means', 'covs', 'eigvals', 'bases'):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def mean(self):
        return self.weights @ self.means

    def covariance(self):
        """Cov(x0) = E[S_k] + Cov(μ_k) (law of total covariance)."""
        centred = self.means - self.mean()
        return torch.einsum('k,kij->ij', self.weights, self.covs) + (self.weights[:, None] * centred).T @ centred

    def sample(self, n, generator=None):
        """[n, d] float32 samples of x0 on the mixture's device."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, device=self.device, dtype=torch.float64)
        x = self.means[k] + torch.einsum('nij,nj->ni', self.bases[k], self.eigvals[k].sqrt() * z)
        return x.float()

    def entropy(self, num_samples=100_000, generator=None):
        """H[p] of the data (σ = 0) in nats by Monte Carlo: minus the mean float64 log p of `num_samples` draws."""
        return -self.log_prob(self.sample(num_samples, generator=generator).double()).mean().item()

    def _components(self, x, sigma):
        """Per-sample, per-component terms: log w_k N(x; μ_k, S_k + σ²I) [n,K], coordinates
        y = U_kᵀ(x − μ_k) [n,K,d] and variances l_k + σ² [n,K,d]."""
        x = x.to(torch.float64)
        s2 = _sigma_column(sigma, x)[:, :, None] ** 2
        y = torch.einsum('kji,nkj->nki', self.bases, x[:, None, :] - self.means)
        var = self.eigvals + s2
        log_normal = -0.5 * ((y ** 2 / var).sum(2) + var.log().sum(2) + self.dim * math.log(2 * math.pi))
        return self.weights.log() + log_normal, y, var

    def log_prob(self, x, sigma=0.0):
        """log p_σ(x) [n] of x = x0 + σε (σ = 0 needs non-singular covariances)."""
        log_joint, _, _ = self._components(x, sigma)
        return torch.logsumexp(log_joint, dim=1).to(x.dtype)

    def denoise(self, x, sigma):
        """E[x0 | x] = Σ_k r_k(x) (μ_k + S_k (S_k + σ²I)⁻¹ (x − μ_k)), r_k ∝ w_k N(x; μ_k, S_k + σ²I)."""
        log_joint, y, var = self._components(x, sigma)
        r = torch.softmax(log_joint, dim=1)
        posterior = self.means + torch.einsum('kij,nkj->nki', self.bases, self.eigvals / var * y)
        return torch.einsum('nk,nki->ni', r, posterior).to(x.dtype)

    __call__ = denoise

    def score(self, x, sigma):
        """∇_x log p_σ(x) by Tweedie's formula: (E[x0|x] − x)/σ²."""
        s = _sigma_column(sigma, x)
        return ((self.denoise(x, sigma).double() - x.double()) / s ** 2).to(x.dtype)


class PointSet:
    """The empirical distribution of `points` [N, ...] noised by σ > 0: the ideal denoiser of a
    finite training set (it reproduces training points as σ → 0). Chunked over N for memory."""

    def __init__(self, points, chunk_size=4096):
        self.shape = points.shape[1:]
        self.points = points.reshape(len(points), -1).to(torch.float64)
        self.chunk_size = chunk_size

    @property
    def dim(self):
        return self.points.shape[1]

    def to(self, device):
        self.points = self.points.to(device)
        return self

    def _reduce(self, x, sigma):
        """Online softmax over the points of −‖x − p‖²/(2σ²): (logsumexp [n], weighted mean [n, D])."""
        flat = x.reshape(len(x), -1).to(torch.float64)
        s2 = _sigma_column(sigma, flat) ** 2
        lse = torch.full((len(flat), 1), -math.inf, dtype=torch.float64, device=flat.device)
        acc = torch.zeros_like(flat)
        for chunk in self.points.split(self.chunk_size):
            logits = -torch.cdist(flat, chunk).square() / (2 * s2)
            new_lse = torch.logaddexp(lse, torch.logsumexp(logits, dim=1, keepdim=True))
            acc = acc * (lse - new_lse).exp() + (logits - new_lse).exp() @ chunk
            lse = new_lse
        return lse.squeeze(1), acc

    def denoise(self, x, sigma):
        return self._reduce(x, sigma)[1].reshape(x.shape).to(x.dtype)

    __call__ = denoise

    def log_prob(self, x, sigma):
        lse, _ = self._reduce(x, sigma)
        s2 = _sigma_column(sigma, x).squeeze(1) ** 2
        return (lse - math.log(len(self.points)) - 0.5 * self.dim * torch.log(2 * math.pi * s2)).to(x.dtype)

    def score(self, x, sigma):
        s = _sigma_column(sigma, x).reshape(-1, *([1] * (x.ndim - 1)))
        return ((self.denoise(x, sigma).double() - x.double()) / s ** 2).to(x.dtype)
