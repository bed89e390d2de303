"""Class conditioning at sampling time, with classifier-free guidance (Ho & Salimans 2022)."""


def guided(denoiser, class_labels, guidance=1.0):
    """The denoiser (x, σ) -> x0_hat of a class-conditional `denoiser` (x, σ, class_labels) for
    `class_labels` [B, label_dim] (one-hot; zeros: unconditional), guided with weight w = `guidance`:
        D_w = D(x; σ, ∅) + w · (D(x; σ, c) − D(x; σ, ∅)),
    so w = 0 is the unconditional model, w = 1 the conditional one, w > 1 guides harder (two
    denoiser calls per evaluation instead of one)."""
    unconditional = class_labels.new_zeros(class_labels.shape)
    if guidance == 1:
        return lambda x, sigma: denoiser(x, sigma, class_labels)
    if guidance == 0:
        return lambda x, sigma: denoiser(x, sigma, unconditional)

    def denoise(x, sigma):
        base = denoiser(x, sigma, unconditional)
        return base + guidance * (denoiser(x, sigma, class_labels) - base)

    return denoise
