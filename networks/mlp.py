"""A small MLP for 2D (or any flat) data, conditioned on c_noise."""

import torch
from torch import nn


class MLP(nn.Module):
    """F(x, c_noise): `depth` hidden layers of `width` SiLU units.

    The noise level enters as c_noise itself concatenated to the input, plus `num_freqs`
    sinusoids of it. The raw c_noise matters: with sinusoidal features alone, runs that see
    few large σ stalled at F ≡ 0 (the Wiener denoiser) for tens of thousands of steps
    (shared/notes/entropy.md).
    """

    def __init__(self, dim=2, width=128, depth=4, num_freqs=8):
        super().__init__()
        self.register_buffer('freqs', 2.0 ** torch.arange(num_freqs) / 4, persistent=False)
        layers, fan_in = [], dim + 1 + 2 * num_freqs
        for _ in range(depth):
            layers += [nn.Linear(fan_in, width), nn.SiLU()]
            fan_in = width
        layers.append(nn.Linear(fan_in, dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x, c_noise):
        c = c_noise.reshape(-1, 1).to(x.dtype)
        angles = c * self.freqs
        return self.net(torch.cat([x, c, angles.sin(), angles.cos()], dim=1))
