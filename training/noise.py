"""Training noise-level (σ) distributions, one interface:

- `sample(n, generator=None, device=None)` -> σ [n], drawn on `device` with `generator` alone
  (no host synchronisation), so runs are reproducible per rank;
- `log_density(sigma)` -> log p(log σ): the density *per log σ* (not per σ; the two differ by
  a factor σ), used for plots and importance weights.
"""

import math

import torch


class LogNormal:
    """EDM's default: log σ ~ N(P_mean, P_std²)."""

    def __init__(self, P_mean=-1.2, P_std=1.2):
        self.P_mean, self.P_std = P_mean, P_std

    def sample(self, n, generator=None, device=None):
        return (self.P_mean + self.P_std * torch.randn(n, generator=generator, device=device)).exp()

    def log_density(self, sigma):
        z = (sigma.log() - self.P_mean) / self.P_std
        return -0.5 * z ** 2 - math.log(self.P_std * math.sqrt(2 * math.pi))


class LogUniform:
    """log σ uniform on [log sigma_min, log sigma_max]."""

    def __init__(self, sigma_min=0.002, sigma_max=80.0):
        self.log_min, self.log_max = math.log(sigma_min), math.log(sigma_max)

    def sample(self, n, generator=None, device=None):
        u = torch.rand(n, generator=generator, device=device)
        return (self.log_min + u * (self.log_max - self.log_min)).exp()

    def log_density(self, sigma):
        inside = (sigma.log() >= self.log_min) & (sigma.log() <= self.log_max)
        value = torch.full_like(sigma, -math.log(self.log_max - self.log_min))
        return torch.where(inside, value, torch.full_like(sigma, -math.inf))


class LogisticLogSNR:
    """Log-SNR λ = −2 log σ ~ Logistic(loc, scale) (Kong et al. 2023)."""

    def __init__(self, loc=0.0, scale=2.0):
        self.loc, self.scale = loc, scale

    def sample(self, n, generator=None, device=None):
        u = torch.rand(n, generator=generator, device=device).clamp(1e-7, 1 - 1e-7)
        log_snr = self.loc + self.scale * (u.log() - (-u).log1p())
        return (-0.5 * log_snr).exp()

    def log_density(self, sigma):
        # p(log σ) = 2·p_λ(−2 log σ); the logistic density is e^{−z}/(s(1+e^{−z})²).
        z = (-2 * sigma.log() - self.loc) / self.scale
        return math.log(2 / self.scale) - z - 2 * torch.nn.functional.softplus(-z)


def build_noise(noise):
    """The σ distribution of a `NoiseConfig`; for `entropic`, its warm-up (base) distribution."""
    name = noise.base if noise.name == 'entropic' else noise.name
    if name == 'lognormal':
        return LogNormal(noise.P_mean, noise.P_std)
    if name == 'loguniform':
        return LogUniform(noise.sigma_min, noise.sigma_max)
    if name == 'logistic':
        return LogisticLogSNR(noise.loc, noise.scale)
    raise ValueError(f"noise.name: unknown distribution '{name}'")
