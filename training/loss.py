"""The EDM training loss (Karras et al. 2022, eq. 2 with λ(σ) = 1/c_out(σ)²)."""

import torch


def edm_loss(denoiser, x0, sigma, generator=None, class_labels=None):
    """Denoising loss of a preconditioned `denoiser` on clean data `x0` [B, ...] at noise levels `sigma` [B]
    (with `class_labels` [B, label_dim] for a class-conditional denoiser).

    Returns (loss, sq_err), both [B]:
    - loss: λ(σ)·‖D(x0 + σε; σ) − x0‖² / d, the weighted error averaged over the d dimensions
      (EDM sums over dimensions; the constant 1/d keeps the value readable and Adam is unaffected).
    - sq_err: the unweighted ‖D − x0‖² summed over dimensions, in data units: the per-sample
      estimate of mmse(σ) the entropy profile consumes (dH/dlog σ = mmse/σ² nats).
    """
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    s = sigma.reshape(-1, *([1] * (x0.ndim - 1)))
    denoised = denoiser(x0 + s * noise, sigma, *(() if class_labels is None else (class_labels,)))
    sq_err = (denoised.float() - x0.float()).square().flatten(1).sum(1)
    loss = denoiser.loss_weight(sigma.float()) * sq_err / x0[0].numel()
    return loss, sq_err
