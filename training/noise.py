"""Training noise-level (σ) distributions, one interface:

- `sample(n, generator=None, device=None)` -> σ [n], drawn on `device` with `generator` alone
  (no host synchronisation), so runs are reproducible per rank;
- `log_density(sigma)` -> log p(log σ): the density *per log σ* (not per σ; the two differ by
  a factor σ), used for plots and importance weights;
- `loss_weight(sigma)` -> the factor [n] on each sample's loss, or None for none (all but importance-weighted
  entropic σ), so that the training step adds no operation for it.

Each is built from the config's `noise` section by a builder registered in NOISE (the config's
`noise.name` and `noise.base` accept these names); `entropic` wraps one of them (`EntropicNoise`).
"""

import math

import torch

from entropy import STRUCTURE_DENSITIES

NOISE = {}


def register(name):
    """Register `builder(noise_config) -> distribution` under `name`."""
    def add(builder):
        NOISE[name] = builder
        return builder
    return add


class SigmaDistribution:
    def loss_weight(self, sigma):
        return None


class LogNormal(SigmaDistribution):
    """EDM's default: log σ ~ N(P_mean, P_std²)."""

    def __init__(self, P_mean=-1.2, P_std=1.2):
        self.P_mean, self.P_std = P_mean, P_std

    def sample(self, n, generator=None, device=None):
        return (self.P_mean + self.P_std * torch.randn(n, generator=generator, device=device)).exp()

    def log_density(self, sigma):
        z = (sigma.log() - self.P_mean) / self.P_std
        return -0.5 * z ** 2 - math.log(self.P_std * math.sqrt(2 * math.pi))


class LogUniform(SigmaDistribution):
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


class LogisticLogSNR(SigmaDistribution):
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


register('lognormal')(lambda noise: LogNormal(noise.P_mean, noise.P_std))
register('loguniform')(lambda noise: LogUniform(noise.sigma_min, noise.sigma_max))
register('logistic')(lambda noise: LogisticLogSNR(noise.loc, noise.scale))


class EntropicNoise(SigmaDistribution):
    """σ uniform in entropic time (or the density `profile.density` names): after `warmup_steps` optimizer
    steps on `base` and a first refresh of `profile` (the training errors' entropy profile, which the
    training loop updates and refreshes), σ comes from the profile's density (`EntropyProfile.sample`).
    The structure densities draw from the profile only with probability α = profile.structure_fraction()
    and from `base` otherwise, so they start as the base while the model is still about the Wiener filter
    and the structure measured is about zero. With `weighting='importance'` the loss is weighted by
    p_base(σ)/p(σ), keeping the base objective. `step` is the optimizer step, set by the training loop."""

    def __init__(self, base, profile, warmup_steps, weighting='keep'):
        self.base, self.profile, self.warmup_steps, self.weighting = base, profile, warmup_steps, weighting
        self.step = 0
        self._refreshed = False  # whether the profile has been refreshed, once read from the device

    @property
    def active(self):
        """Whether σ is drawn from the profile now (after the warm-up and a first refresh). The count of refreshes
        lives on the device and only grows: it is read (a host synchronisation) until it is found > 0, not after."""
        if self.step < self.warmup_steps:
            return False
        self._refreshed = self._refreshed or bool(self.profile.num_refreshes > 0)
        return self._refreshed

    @property
    def _mixes_base(self):
        return self.profile.density in STRUCTURE_DENSITIES

    def sample(self, n, generator=None, device=None):
        if not self.active:
            return self.base.sample(n, generator=generator, device=device)
        sigma = self.profile.sample(n, generator=generator)
        if self._mixes_base:
            base = self.base.sample(n, generator=generator, device=device)
            use_profile = torch.rand(n, generator=generator, device=device) < self.profile.structure_fraction()
            sigma = torch.where(use_profile, sigma, base)
        return sigma

    def log_density(self, sigma):
        base = self.base.log_density(sigma)
        if not self.active:
            return base
        profile = self.profile.log_density(sigma)
        if not self._mixes_base:
            return profile
        alpha = self.profile.structure_fraction().to(sigma.device, sigma.dtype)
        return torch.logaddexp(alpha.log() + profile, (1 - alpha).log() + base)

    def loss_weight(self, sigma):
        if self.weighting != 'importance' or not self.active:
            return None
        return (self.base.log_density(sigma) - self.log_density(sigma)).exp()


def build_noise(noise, profile):
    """The σ distribution of a `NoiseConfig`; `profile` is the run's `EntropyProfile` (read by `entropic`)."""
    if noise.name == 'entropic':
        return EntropicNoise(NOISE[noise.base](noise), profile, noise.warmup_steps, noise.weighting)
    return NOISE[noise.name](noise)
