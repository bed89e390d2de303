"""Linear-probe accuracy of a trained denoiser's encoder: how linearly the classes of the training
images separate in the features the network computes for them at one fixed noise level, the
representation measure that diffusion-model papers report next to FID (DDAE, Xiang et al. 2023;
REPA, Yu et al. 2024). Plain torch.

- `encoder_features`: the activations at the end of the UNet encoder (its lowest resolution, just
  before the decoder's bottleneck) for the noisy images x + σ·ε at a fixed σ, averaged over H, W.
- `linear_probe`: a multinomial logistic regression on standardised features, held-out accuracy.
- `probe_accuracy`: both on a fixed, seeded split of a model's training images.

Where the features come from (`encoder_output`): the last module of the raw network's `enc`, for
both UNets of networks/. In the DDPM++ `UNet` that is `enc[-1]`, the last residual block of the
lowest level (DDPM++ CIFAR-10: 256 channels at 8×8; ddpmpp-mnist-fast: 32 channels at 7×7); in
EDM2's `MPUNet` it is `enc['{r}x{r}_block{num_blocks - 1}']` at the lowest resolution r (EDM2-S
sized cifar10: 768 channels at 4×4). Its output is the last encoder activation, the input of the
decoder's bottleneck blocks (`dec[0]`, `dec['{r}x{r}_in0']`) and the last skip the decoder pops.
The hook stops the forward pass there, so the decoder never runs.

The network sees what the preconditioning gives it: c_in(σ)·(x + σε) and c_noise(σ) (networks/
precond.py), the images x in [−1, 1]. Class-conditional networks get all-zero labels, their
unconditional input (classifier-free guidance's), so the features cannot see the labels.
"""

import torch
import torch.nn.functional as F
from torch import nn

from datasets.images import to_data

# The probe's default σ: σ_data = 0.5, EDM's data scale (c_skip = 1/2), inside the bulk of the training
# noise (lognormal, median e^−1.2 ≈ 0.3): enough noise that the network must use the image's content,
# little enough that the digit or object is still there. EDM2 reports no probe; DDAE's EDM setting
# (step 4 of the 18-step ρ = 7 schedule, σ ≈ 0.06) is for a decoder block of a converged CIFAR-10 net.
# metrics.py --probe-sigma changes it.
DEFAULT_SIGMA = 0.5


class _EncoderDone(Exception):
    """Raised by the hook once the encoder's output is captured: the decoder is not run."""


def encoder_output(net):
    """The module of the raw network `net` (a `UNet` or an `MPUNet`) whose output is the end of the
    encoder: the last entry of its `enc` (module docstring)."""
    enc = getattr(net, 'enc', None)
    if isinstance(enc, nn.ModuleList) and len(enc):
        return enc[-1]
    if isinstance(enc, nn.ModuleDict) and len(enc):
        return list(enc.values())[-1]
    raise ValueError(f'{type(net).__name__}: not a UNet with an encoder (`enc`); the probe needs an image network')


@torch.no_grad()
def encoder_features(denoiser, x, sigma, class_labels=None, generator=None, batch_size=256, module=None):
    """Pooled encoder features [N, C] (float32) of the clean images `x` [N, C, H, W] (in [−1, 1])
    seen at noise level `sigma`: the output of `encoder_output(denoiser.model)` (or of `module`, a
    submodule of the raw network) for the input x + σ·ε, averaged over its H and W.

    `denoiser`: a `networks.precond.Precond` (the network sees c_in(σ)·(x + σε), c_noise(σ)).
    ε ~ N(0, I) comes from `generator` (on x's device; None: the global stream), drawn batch by
    batch in order: the same generator state and `batch_size` give the same features.
    `class_labels`: [N, label_dim] one-hot, or None: all-zero (unconditional) labels for a
    class-conditional network. The network runs in eval mode (no dropout) and is put back after.
    """
    net = denoiser.model
    module = encoder_output(net) if module is None else module
    label_dim = getattr(net, 'label_dim', 0)
    captured = []

    def hook(_module, _inputs, output):
        captured.append(output.float().mean(dim=(2, 3)))
        raise _EncoderDone

    handle = module.register_forward_hook(hook)
    was_training = denoiser.training
    denoiser.eval()
    try:
        for start in range(0, len(x), batch_size):
            batch = x[start:start + batch_size].float()
            noisy = batch + sigma * torch.randn(batch.shape, generator=generator, device=batch.device)
            labels = class_labels[start:start + batch_size] if class_labels is not None else (
                torch.zeros(len(batch), label_dim, device=batch.device) if label_dim else None)
            try:
                denoiser(noisy, torch.full((len(batch),), float(sigma), device=batch.device), labels)
            except _EncoderDone:
                continue
            raise ValueError(f'{type(module).__name__}: the hooked module did not run in the forward pass')
    finally:
        handle.remove()
        denoiser.train(was_training)
    return torch.cat(captured) if captured else torch.zeros(0, 0)


def _standardise(train, test):
    """Both sets shifted and scaled by the train set's per-feature mean and standard deviation
    (features constant on the train set are only centred)."""
    mean, std = train.mean(0), train.std(0)
    std = torch.where(std > 1e-12 * (1 + mean.abs()), std, torch.ones_like(std))
    return (train - mean) / std, (test - mean) / std


def linear_probe(train_features, train_labels, test_features, test_labels, num_classes=None, weight_decay=1e-3,
                 max_iter=500, standardise=True):
    """Held-out accuracy (a float in [0, 1]) of a multinomial logistic regression fitted to
    `train_features` [N, D] and integer `train_labels` [N], scored on `test_features` [M, D] and
    `test_labels` [M].

    The features are standardised with the train set's statistics (a probe must not depend on the
    features' scale: a network's activations may be 1e-3 or 1e3), then the mean cross-entropy plus
    `weight_decay`/2·‖W‖² (not the bias) is minimised full-batch by L-BFGS with a strong-Wolfe line
    search, from zero weights, in float64 on the CPU: deterministic. `num_classes`: default the
    largest label + 1."""
    xtr = train_features.detach().to('cpu', torch.float64)
    xte = test_features.detach().to('cpu', torch.float64)
    ytr, yte = train_labels.detach().cpu().long(), test_labels.detach().cpu().long()
    if xtr.ndim != 2 or xte.ndim != 2 or xtr.shape[1] != xte.shape[1]:
        raise ValueError(f'features must be [N, D] and [M, D] (got {tuple(xtr.shape)} and {tuple(xte.shape)})')
    if len(xtr) != len(ytr) or len(xte) != len(yte):
        raise ValueError(f'{len(ytr)} and {len(yte)} labels for {len(xtr)} and {len(xte)} feature rows')
    if len(xtr) < 2 or not len(xte):
        raise ValueError(f'need at least 2 train and 1 test rows (got {len(xtr)} and {len(xte)})')
    if num_classes is None:
        num_classes = int(max(ytr.max(), yte.max())) + 1
    if standardise:
        xtr, xte = _standardise(xtr, xte)
    weight = torch.zeros(xtr.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=max_iter, history_size=20,
                                  tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn='strong_wolfe')

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(xtr @ weight + bias, ytr) + 0.5 * weight_decay * weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return ((xte @ weight + bias).argmax(1) == yte).double().mean().item()


def probe_split(num_images, num_train, num_test, seed=0):
    """(train indices, test indices) into `num_images` images: a permutation seeded by `seed`, the
    first `num_test` of it held out and the next `num_train` to fit on, disjoint. Seeded rather
    than the last images because folder-built datasets come sorted by class."""
    if num_train < 2 or num_test < 1:
        raise ValueError(f'need at least 2 train and 1 held-out images (got {num_train} and {num_test})')
    if num_train + num_test > num_images:
        raise ValueError(f'{num_train} train + {num_test} held-out images: the dataset has {num_images}')
    order = torch.randperm(num_images, generator=torch.Generator().manual_seed(seed))
    return order[num_test:num_test + num_train], order[:num_test]


def probe_accuracy(model, sigma=DEFAULT_SIGMA, num_train=4000, num_test=1000, seed=0, use_ema=True, batch_size=256):
    """Linear-probe accuracy of a `sampling_model.SamplingModel` of an image dataset: encoder features
    (`encoder_features`, noise from a generator seeded `seed`) of `num_train` of its training images
    fit the probe (`linear_probe`), scored on `num_test` others (`probe_split`: disjoint, seeded).
    The diffusion model itself trained on all of them; "held out" is from the probe.

    Returns {'accuracy', 'sigma', 'num_train', 'num_test', 'num_classes', 'chance' (1/num_classes),
    'feature_dim', 'feature_resolution' ([H, W] before pooling)}."""
    if not sigma > 0:
        raise ValueError(f'sigma: must be > 0 (got {sigma})')
    data = model.dataset
    if getattr(data, 'images', None) is None or getattr(data, 'labels', None) is None:
        raise ValueError(f"{getattr(data, 'name', type(data).__name__)}: not a labelled image dataset")
    train_index, test_index = probe_split(len(data.images), num_train, num_test, seed)
    denoiser = model.denoiser if use_ema else model.raw_denoiser
    device = next(denoiser.parameters(), data.images).device  # (a parameter-free stand-in: the data's)
    resolution = []
    handle = encoder_output(denoiser.model).register_forward_hook(
        lambda _m, _i, out: resolution.append(list(out.shape[-2:])) if not resolution else None)
    try:
        features = {}
        for part, index in (('train', train_index), ('test', test_index)):
            x = to_data(data.images[index.to(data.images.device)].to(device), data.scale)
            generator = torch.Generator(device).manual_seed(seed + (part == 'test'))
            features[part] = encoder_features(denoiser, x, sigma, generator=generator, batch_size=batch_size)
    finally:
        handle.remove()
    labels = data.labels.cpu()
    accuracy = linear_probe(features['train'], labels[train_index], features['test'], labels[test_index],
                            num_classes=data.num_classes)
    return {'accuracy': accuracy, 'sigma': float(sigma), 'num_train': num_train, 'num_test': num_test,
            'num_classes': data.num_classes, 'chance': 1 / data.num_classes, 'feature_dim': features['train'].shape[1],
            'feature_resolution': resolution[0]}
