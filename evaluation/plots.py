"""Figures (matplotlib, headless): samples over the ground truth, denoising trajectories, and
loss and score norm against σ. Each function returns a Figure; `save` writes it as PNG. Images:
`image_grid` tiles samples, `save_image` writes one as PNG."""

import math
from pathlib import Path

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def _lim(*arrays):
    points = np.concatenate([np.asarray(a) for a in arrays if a is not None])
    lo, hi = np.percentile(points, [0.5, 99.5], axis=0)
    pad = 0.1 * (hi - lo).max()
    return (lo[0] - pad, hi[0] + pad), (lo[1] - pad, hi[1] + pad)


def samples_figure(x, reference=None, title=None):
    """Generated points `x` [n,2] (blue) over ground-truth points `reference` [m,2] (grey)."""
    x = x.detach().cpu().numpy()
    ref = None if reference is None else reference.detach().cpu().numpy()
    fig, ax = plt.subplots(figsize=(5, 5))
    if ref is not None:
        ax.scatter(ref[:, 0], ref[:, 1], s=2, c='0.75', label='ground truth')
    ax.scatter(x[:, 0], x[:, 1], s=2, c='tab:blue', alpha=0.6, label='samples')
    xlim, ylim = _lim(ref if ref is not None else x)
    ax.set(xlim=xlim, ylim=ylim, aspect='equal', title=title or '')
    ax.legend(loc='upper right', markerscale=4, fontsize=8)
    fig.tight_layout()
    return fig


def trajectories_figure(path, reference=None, num_paths=64, title='denoising trajectories'):
    """`path` [steps+1, n, 2]: the sampler's x after each step; draws `num_paths` of them."""
    path = path.detach().cpu().numpy()[:, :num_paths]
    fig, ax = plt.subplots(figsize=(5, 5))
    if reference is not None:
        ref = reference.detach().cpu().numpy()
        ax.scatter(ref[:, 0], ref[:, 1], s=2, c='0.8')
    for i in range(path.shape[1]):
        ax.plot(path[:, i, 0], path[:, i, 1], lw=0.6, alpha=0.7)
    ax.scatter(path[-1, :, 0], path[-1, :, 1], s=8, c='k', zorder=3)
    xlim, ylim = _lim(path[-1], None if reference is None else reference.cpu().numpy())
    ax.set(xlim=xlim, ylim=ylim, aspect='equal', title=title)
    fig.tight_layout()
    return fig


def loss_vs_sigma_figure(sigma, loss):
    """Mean weighted training loss per log-σ bin (NaN bins are skipped)."""
    sigma, loss = np.asarray(sigma), np.asarray(loss)
    keep = np.isfinite(loss)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(sigma[keep], loss[keep], 'o-')
    ax.set(xscale='log', xlabel='σ', ylabel='λ(σ)·‖D − x0‖² / d', title='training loss against σ')
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def sigma_curves_figure(sigma, curves):
    """`curves`: {label: (mse [k], score_norm [k])} on the σ grid `sigma` [k]; two panels."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    for label, (mse, score_norm) in curves.items():
        a.plot(sigma, mse, label=label)
        b.plot(sigma, score_norm, label=label)
    a.set(xscale='log', yscale='log', xlabel='σ', ylabel='E‖D(x;σ) − x0‖²', title='denoising error against σ')
    b.set(xscale='log', yscale='log', xlabel='σ', ylabel='E‖∇log p_σ(x)‖', title='score norm against σ')
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def profile_figure(profile, schedules=None, training_log_density=None):
    """An `EntropyProfile`: entropy rate and the profile's entropic σ density per log σ (with a spectrum,
    also the rate lmmse/σ² of a Gaussian with the data's covariance and the structure rate, their
    difference), H(σ) − H(σ_min), and the entropic and rescaled times (CDFs). `training_log_density`
    (σ -> log density per log σ), where given, is the density the run drew its training σ from (a
    lognormal run's is not the profile's). `schedules` {label: σ tensor} are drawn as ticks on the
    CDF panel, at the height of their entropic time."""
    sigma = profile.mmse()[0].cpu().numpy()
    rate = profile.rate()[1].cpu().numpy()
    entropy = profile.entropy()[1].cpu().numpy()
    rescaled = profile.rescaled()[1].cpu().numpy()
    entropic_time = entropy / entropy[-1] if entropy[-1] > 0 else np.linspace(0, 1, len(entropy))
    density = profile.log_density(profile.mmse()[0]).exp().cpu().numpy()
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 3.8))
    a.plot(sigma, rate, label='dH/dlog σ = mmse/σ² (nats)')
    if profile.spectrum is not None:
        a.plot(sigma, (profile.lmmse()[1] / profile.sigma_grid ** 2).cpu().numpy(), label='Gaussian rate lmmse/σ²')
        a.plot(sigma, profile.structure_rate()[1].cpu().numpy(), label='structure rate (lmmse − mmse)/σ²')
    top = np.nanmax(rate) if np.isfinite(rate).any() else 1.0  # a profile not yet refreshed has no rate

    def scaled(d):
        return d * top / max(d.max(), 1e-12)
    if training_log_density is not None:
        trained = training_log_density(profile.mmse()[0]).exp().cpu().numpy()
        a.plot(sigma, scaled(trained), '--', label='training σ density (scaled)')
    a.plot(sigma, scaled(density), ':', label="the profile's entropic σ density (scaled)")
    a.set(xscale='log', xlabel='σ', title='entropy rate per log σ')
    b.plot(sigma, entropy)
    b.set(xscale='log', xlabel='σ', ylabel='nats', title='H[x0 | x_σ] − H[x0 | x_σmin]')
    c.plot(sigma, entropic_time, label='entropic time')
    c.plot(sigma, rescaled, label='rescaled entropic time')
    for i, (label, sigmas) in enumerate((schedules or {}).items()):
        s = sigmas[sigmas > 0].cpu().numpy()
        c.plot(s, np.interp(np.log(s), np.log(sigma), entropic_time), '|', markersize=12 - 2 * i, label=label)
    c.set(xscale='log', xlabel='σ', title='time (CDF) and schedules')
    for ax in (a, b, c):
        ax.grid(alpha=0.3)
    a.legend(fontsize=8)
    c.legend(fontsize=8)
    fig.tight_layout()
    return fig


def save(fig, path):
    fig.savefig(path, dpi=120)
    plt.close(fig)


def to_uint8(x, scale=1.0):
    """Images [..., C, H, W] in [−scale, scale] (the data's `data.scale`) as uint8 pixels (clamped,
    rounded), on the CPU: the inverse of `datasets.images.to_data`."""
    return ((x.detach().float().cpu() / scale + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def image_grid(x, nrow=None, scale=1.0):
    """Images [n, C, H, W] in [−scale, scale] tiled into one uint8 image [C, H', W'] (about square)."""
    from torchvision.utils import make_grid
    nrow = nrow or max(1, int(math.ceil(math.sqrt(len(x)))))
    return make_grid(to_uint8(x, scale), nrow=nrow, padding=2, pad_value=255)


def save_image(image, path):
    """A uint8 image [C, H, W] (1 or 3 channels) as PNG."""
    from torchvision.io import write_png
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_png(image, str(path))
