"""Preconditionings of the EDM paper (Karras et al. 2022, Table 1).

Each wraps a raw network F(c_in·x, c_noise) into a denoiser
D(x; σ) = c_skip(σ)·x + c_out(σ)·F(c_in(σ)·x; c_noise(σ)). The matching loss weight is
λ(σ) = 1/c_out(σ)², which makes the effective target of F unit-weighted at every σ
(EDM: λ = (σ² + σ_data²)/(σ·σ_data)²; VP and VE: λ = 1/σ²).
"""

import math

import torch
from torch import nn


class Precond(nn.Module):
    """Shared forward pass; subclasses define the four coefficients as functions of σ."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, sigma, class_labels=None):
        """x: [B, ...]; sigma: [B] (or broadcastable) noise level; class_labels: [B, label_dim] one-hot
        (zeros: unconditional) for class-conditional networks. Returns x0_hat like x."""
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1)
        sigma = sigma.expand(x.shape[0]) if sigma.numel() == 1 else sigma
        s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
        labels = () if class_labels is None else (class_labels,)
        F = self.model(self.c_in(s) * x, self.c_noise(sigma), *labels)
        return self.c_skip(s) * x + self.c_out(s) * F

    def loss_weight(self, sigma):
        return 1 / self.c_out(sigma) ** 2

    def logvar(self, sigma):
        """u(σ) [B], the learned log-variance of the loss at `sigma` [B] (EDM2's `return_logvar`), for a
        network with a log-variance head (`network.learned_weighting`)."""
        return self.model.logvar(self.c_noise(sigma))


class EDMPrecond(Precond):
    def __init__(self, model, sigma_data=0.5):
        super().__init__(model)
        self.sigma_data = sigma_data

    def c_skip(self, sigma):
        return self.sigma_data ** 2 / (sigma ** 2 + self.sigma_data ** 2)

    def c_out(self, sigma):
        return sigma * self.sigma_data / (sigma ** 2 + self.sigma_data ** 2).sqrt()

    def c_in(self, sigma):
        return 1 / (sigma ** 2 + self.sigma_data ** 2).sqrt()

    def c_noise(self, sigma):
        return sigma.log() / 4


class VPPrecond(Precond):
    """Variance preserving (DDPM++): c_noise is (M−1)·t with t the VP time of σ."""

    def __init__(self, model, beta_d=19.9, beta_min=0.1, M=1000):
        super().__init__(model)
        self.beta_d, self.beta_min, self.M = beta_d, beta_min, M

    def c_skip(self, sigma):
        return torch.ones_like(sigma)

    def c_out(self, sigma):
        return -sigma

    def c_in(self, sigma):
        return 1 / (sigma ** 2 + 1).sqrt()

    def c_noise(self, sigma):
        t = ((self.beta_min ** 2 + 2 * self.beta_d * (1 + sigma ** 2).log()).sqrt() - self.beta_min) / self.beta_d
        return (self.M - 1) * t


class VEPrecond(Precond):
    """Variance exploding (NCSN++)."""

    def c_skip(self, sigma):
        return torch.ones_like(sigma)

    def c_out(self, sigma):
        return sigma

    def c_in(self, sigma):
        return torch.ones_like(sigma)

    def c_noise(self, sigma):
        return (0.5 * sigma).log()
