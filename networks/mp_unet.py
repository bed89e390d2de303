"""The magnitude-preserving UNet of EDM2 (Karras et al. 2024, "Analyzing and Improving the Training
Dynamics of Diffusion Models", CONFIG G of its Table 1), for 28 or 32 px images with 1 or 3 channels,
and the paper's ablation ladder C → D → E → F → G as four switches of the same code (see LADDER).

The design goal of EDM2 is that every activation, every weight and every update keeps a known,
roughly unit magnitude, so that nothing drifts during training:

* every learned layer is an `MPConv`: its weight is *forced* to a fixed norm (normalised in the
  forward pass and, while training, rewritten in place), so Adam cannot grow or shrink it;
* no biases and no GroupNorm: a constant-ones input channel stands in for the first layer's bias,
  and encoder activations are pixel-normalised instead;
* every nonlinearity, sum and concatenation is rescaled to keep unit-variance inputs at unit
  variance (`mp_silu`, `mp_sum`, `mp_cat`);
* the only free scales are learned gains initialised at zero (the embedding's effect on each
  block and the output layer), so the net is exactly F ≡ 0 at initialisation.

The ladder (paper §2 and Appendix B, Figures 18-22; Table 1 gives FID / Mparams at ImageNet-512,
EDM2-S size: C 6.96 / 277.8, D 3.75 / 277.8, E 3.02 / 277.8, F 2.71 / 280.2, G 2.56 / 280.2).
Each step is one switch of `MPUNet`; the defaults are G, today's network, bit for bit:

* C, "architectural streamlining" (the starting point, all switches off): ADM's blocks without
  biases (a constant-ones input channel instead), Fourier noise features, a two-layer embedding
  MLP, group norms without mean subtraction or learned scale (`group_rms_norm`), cosine
  attention, plain layers with EDM's uniform init, plain SiLU, sums and concatenation.
* D, `mp_learned`: every conv/linear weight is normalised per output channel in the forward pass
  (weight normalisation without a learned scale), drawn from N(0, 1).
* E, `forced_weight_norm`: the stored weights are also rewritten to unit RMS after every
  optimiser step, which pins the effective learning rate (the paper pairs it with the inverse
  square-root decay, `optim.schedule: edm2`).
* F, `group_norm=False`: no group norms; pixel norm on the encoder main path instead, resampling
  and the encoder's 1×1 conv moved to the start of the main path, no SiLU before the output conv,
  one embedding layer instead of two (+2.4 M parameters at EDM2-S size: the encoder's first 3×3
  conv of each level sees the new width, and the 768×768 embedding layer goes).
* G, `mp_fixed`: magnitude-preserving fixed-function layers — √2 Fourier features, MP-SiLU,
  MP-sum (residual weight 0.3, embedding 0.5), MP-cat, and the zero-initialised output and
  per-block embedding gains. Our activation clipping at ±256 (NVlabs/edm2's code, which holds
  only G) is G's too: LADDER turns it off below G.

Not part of the network: B's learned loss weighting (`LogVarHead`, kept in every step) and its
other training changes (learning rate, β2 = 0.99, power-function EMA), and E's learning-rate decay,
which live in the training config.

Conventions. A raw network here is called as F(c_in·x, c_noise) (networks/precond.py); for the EDM
preconditioning c_noise = log(σ)/4 is a [B] tensor. "Unit magnitude" means unit RMS over the
elements in question (a per-pixel channel vector, a weight row). For a weight of shape
[C_out, C_in, k, k] we call fan_in = C_in·k·k, and:

* the *stored* weight has unit RMS per output channel, i.e. ‖w_i‖ = √fan_in ("unit norm" in the
  RMS sense used throughout EDM2, which keeps Adam's ~lr-sized elementwise steps a fixed fraction
  of the weight);
* the *effective* weight is w_i/‖w_i‖·√fan_in · gain/√fan_in = gain · w_i/‖w_i‖: elements of scale
  1/√fan_in and a true unit L2 norm per output channel, so y = w·x keeps the magnitude of an
  input with unit-variance elements (exactly for independent inputs; in expectation over random
  unit directions w_i for any input).

Odd sizes (MNIST: 28 → 14 → 7 → 4). Downsampling is 2×2 average pooling with `ceil_mode`, so an
odd side n gives ⌈n/2⌉ and the last row/column is averaged over the pixels that exist (no padding
is invented). Upsampling repeats each pixel 2×2 and crops to the size of the skip connection it
is concatenated with, which inverts the ceil pooling exactly. Any H×W works; `img_resolution` only
decides which levels get attention.
"""

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

# ---------------------------------------------------------------------------------------------
# Magnitude-preserving primitives.


def normalize(x, dim=None, eps=1e-4):
    """x scaled to unit RMS over `dim` (default: all dims but the first), i.e. ‖x‖ = √(#elements).

    The norm is taken in float32 for bf16/fp16 inputs. `eps` is added to the RMS, so an all-zero
    slice stays zero instead of producing NaN.
    """
    if dim is None:
        dim = list(range(1, x.ndim))
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=torch.float32)
    norm = torch.add(eps, norm, alpha=math.sqrt(norm.numel() / x.numel()))  # eps + ‖x‖/√n = eps + RMS
    return x / norm.to(x.dtype)


def float32(device):
    """Within: autocast off, so that layers fed float32 compute in float32 (EDM2's embedding and
    log-variance head stay in float32 under mixed precision: a handful of small layers)."""
    return torch.autocast(torch.device(device).type, enabled=False)


def mp_silu(x):
    """SiLU divided by 0.596 ≈ E[silu(z)²]^½ for z ~ N(0, 1), so unit-variance inputs give unit RMS."""
    return F.silu(x) / 0.596


def mp_sum(a, b, t=0.5):
    """(1−t)·a + t·b divided by √((1−t)² + t²): unit magnitude for independent unit-magnitude a, b.

    t is the weight of b (0: a alone, 1: b alone); EDM2 uses t = 0.3 for residual branches.
    """
    return a.lerp(b, t) / math.sqrt((1 - t) ** 2 + t ** 2)


def mp_cat(a, b, dim=1, t=0.5):
    """Concatenate a (N_a channels) and b (N_b channels) along `dim` at unit overall magnitude.

    Each part is scaled so that the whole has unit RMS when a and b do, while their relative
    contributions to a following unit-norm layer are (1−t) : t whatever N_a and N_b are (a plain
    cat would weight them by N_a : N_b).
    """
    na, nb = a.shape[dim], b.shape[dim]
    c = math.sqrt((na + nb) / ((1 - t) ** 2 + t ** 2))
    wa, wb = c / math.sqrt(na) * (1 - t), c / math.sqrt(nb) * t
    return torch.cat([wa * a, wb * b], dim=dim)


class MPFourier(nn.Module):
    """Fixed random Fourier features: [B] → [B, num_channels], √2·cos(2π(f·x + φ)).

    f ~ N(0, bandwidth²) and φ ~ U[0, 1) are drawn once and kept as (persistent) buffers so a
    checkpoint reproduces them. The √2 makes each feature unit-RMS over random phases. For
    c_noise = log(σ)/4 ∈ [−1.6, 1.1] (σ ∈ [0.002, 80]) a unit bandwidth resolves σ well.
    magnitude_preserving=False drops the √2 (CONFIGS C-F: plain Fourier features, RMS 1/√2).
    """

    def __init__(self, num_channels, bandwidth=1.0, magnitude_preserving=True):
        super().__init__()
        self.register_buffer('freqs', 2 * math.pi * torch.randn(num_channels) * bandwidth)
        self.register_buffer('phases', 2 * math.pi * torch.rand(num_channels))
        self.scale = math.sqrt(2) if magnitude_preserving else 1.0

    def forward(self, x):
        y = x.to(torch.float32).reshape(-1).outer(self.freqs.to(torch.float32)) + self.phases.to(torch.float32)
        return (y.cos() * self.scale).to(x.dtype)


def group_rms_norm(x, num_groups=32, min_channels_per_group=4, eps=1e-4):
    """The group normalisation of CONFIGS C-E (EDM2 Eq. 29): x [B, C, H, W] divided, per sample and
    group of channels, by √(mean of x² over the group's channels and pixels + eps) — ADM's
    GroupNorm without the mean subtraction, the learned scale and the bias.

    Groups as in EDM's GroupNorm: min(num_groups, C // min_channels_per_group), lowered until they
    divide C (EDM would refuse such widths; the paper's are multiples of 32). Computed in float32.
    """
    c = x.shape[1]
    groups = max(min(num_groups, c // min_channels_per_group), 1)
    while c % groups:
        groups -= 1
    y = x.to(torch.float32).reshape(x.shape[0], groups, -1)
    y = y * torch.rsqrt(y.square().mean(dim=2, keepdim=True) + eps)
    return y.reshape(x.shape).to(x.dtype)


WEIGHT_NORMS = ('forced', 'standard', 'none')


class MPConv(nn.Module):
    """Bias-free conv (kernel=[k, k]) or linear layer (kernel=[]) with forced weight normalisation.

    `weight_norm` selects the rung of the ladder (module docstring): 'forced' (CONFIG E onwards,
    everything below), 'standard' (CONFIG D: normalised in the forward pass only, never rewritten,
    so ‖w‖ grows under Adam) or 'none' (CONFIG C: a plain layer, y = gain·w·x, with EDM's
    "kaiming_uniform" init w ~ U(±√(3/fan_in)), i.e. unit-variance-preserving at init).

    Weight [out_channels, in_channels, *kernel], stored unnormalised but, in train mode, rewritten
    in place to unit RMS per output channel before its first use after each change (i.e. once
    per optimiser step). The effective weight is normalize(w) · gain/√fan_in: unit L2 norm per
    output channel (times `gain`).

    Why both the forward normalisation and the in-place one: normalising in the forward pass
    makes the layer invariant to the scale of the stored weight, so the gradient is orthogonal to
    w and every (Adam) step *grows* ‖w‖ — which silently shrinks the effective learning rate over
    training (EDM2 §2.3/§3). Writing the normalised weight back after each step (here: at the
    start of the next training forward, under no_grad, so autograd never sees it) pins ‖w‖, so
    the relative size of updates is set by the learning-rate schedule alone. The forward
    normalisation is still needed so that the gradient is taken through the projection.

    Unlike EDM2's code, the write is skipped while the weight is unchanged since the last one
    (tracked by the tensor's version counter, which every in-place update through the parameter
    bumps — torch optimisers, load_state_dict). Besides saving work, this lets a training step
    call the network several times before backward: an unconditional write would modify a
    tensor that the first call's graph saved, and backward would fail. (Edits through
    `weight.data` bypass the counter; they are normalised at the next optimiser step.)

    forward(x, gain=1): x [B, in_channels, H, W] → [B, out_channels, H, W] (padding k//2), or
    x [B, in_channels] → [B, out_channels] for kernel=[].
    """

    def __init__(self, in_channels, out_channels, kernel=(3, 3), weight_norm='forced'):
        super().__init__()
        if weight_norm not in WEIGHT_NORMS:
            raise ValueError(f"weight_norm: must be one of {', '.join(WEIGHT_NORMS)} (got {weight_norm!r})")
        self.in_channels, self.out_channels, self.weight_norm = in_channels, out_channels, weight_norm
        if weight_norm == 'none':
            fan_in = in_channels * math.prod(kernel)
            w = (torch.rand(out_channels, in_channels, *kernel) * 2 - 1) * math.sqrt(3 / fan_in)
        else:
            w = torch.randn(out_channels, in_channels, *kernel)
        self.weight = nn.Parameter(w)
        self._normalized = None  # (storage, version) of the weight at the last in-place write

    @property
    def fan_in(self):
        return self.weight[0].numel()

    def effective_weight(self, gain=1):
        """normalize(w)·gain/√fan_in in float32 (differentiable w.r.t. the stored weight and gain);
        w·gain for weight_norm='none'."""
        if self.weight_norm == 'none':
            return self.weight.to(torch.float32) * gain
        return normalize(self.weight.to(torch.float32)) * (gain / math.sqrt(self.fan_in))

    @torch.no_grad()
    def renormalize_(self):
        """Rewrite the stored weight to unit RMS per output channel (done by forward in train mode)."""
        self.weight.copy_(normalize(self.weight.to(torch.float32)))
        self._normalized = (self.weight.data_ptr(), self.weight._version)

    def forward(self, x, gain=1):
        # Must come before the differentiable use below, which saves the weight for backward.
        if self.training and self.weight_norm == 'forced' and \
                self._normalized != (self.weight.data_ptr(), self.weight._version):
            self.renormalize_()
        w = self.effective_weight(gain).to(x.dtype)
        if w.ndim == 2:
            return x @ w.t()
        return F.conv2d(x, w, padding=w.shape[-1] // 2)


def resample(x, mode='keep', size=None):
    """'keep'; 'down': 2×2 average pool, ⌈H/2⌉×⌈W/2⌉ for odd sides; 'up': 2×2 nearest, cropped to
    `size` (the matching skip's H, W) when given — the exact inverse of the ceil pooling grid."""
    if mode == 'down':
        # ceil_mode: an odd last row/column becomes its own (1×2, 2×1 or 1×1) cell; its average
        # is over existing pixels only (padding=0, so no zeros enter the mean).
        return F.avg_pool2d(x, 2, ceil_mode=True)
    if mode == 'up':
        x = x.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
        return x if size is None else x[..., :size[0], :size[1]]
    return x


# ---------------------------------------------------------------------------------------------
# The UNet.


class Block(nn.Module):
    """One residual UNet block of EDM2, optionally resampling first and ending with attention.

    'enc' flavour: resample → (1×1 conv if the width changes) → pixel norm → residual branch.
    'dec' flavour: resample → residual branch → (1×1 conv on the skip path if the width changes).
    Residual branch: mp_silu → 3×3 conv → ×(1 + gain·emb_linear(emb)) → mp_silu → dropout → 3×3
    conv, joined by mp_sum(x, y, res_balance). With the embedding gain at zero (init) the block
    ignores emb. Attention (optional): multi-head cosine attention — q, k, v pixel-normalised per
    head, so logits are bounded by √(channels per head) and cannot blow up — joined by
    mp_sum(x, attn, attn_balance). Activations are finally clipped to ±clip_act as in EDM2, a
    guard for reduced precision (None: no clipping).

    The ladder switches (module docstring): `weight_norm` for every MPConv (C 'none', D 'standard',
    E-G 'forced'); `group_norm=True` (C-E) is ADM's pre-activation block instead, both flavours
    alike: group_rms_norm → silu → resample → 3×3 conv (in → out channels) → group_rms_norm →
    ×(1 + emb_linear(emb)) → silu → dropout → 3×3 conv, added to the main path resample → (1×1
    conv); no pixel norm. `mp_fixed=False` (C-F) uses silu, plain sums and no embedding gain.

    forward(x [B, in_channels, H, W], emb [B, emb_channels], size=None) → [B, out_channels, H', W']
    with H', W' = H, W ('keep'), ⌈H/2⌉, ⌈W/2⌉ ('down') or `size` ('up', default 2H, 2W).
    """

    def __init__(self, in_channels, out_channels, emb_channels, flavor='enc', resample_mode='keep',
                 attention=False, channels_per_head=64, dropout=0.0, res_balance=0.3, attn_balance=0.3,
                 clip_act=256, weight_norm='forced', group_norm=False, mp_fixed=True):
        super().__init__()
        assert flavor in ('enc', 'dec') and resample_mode in ('keep', 'up', 'down')
        self.in_channels, self.out_channels = in_channels, out_channels
        self.flavor, self.resample_mode = flavor, resample_mode
        self.dropout, self.res_balance, self.attn_balance, self.clip_act = dropout, res_balance, attn_balance, clip_act
        self.group_norm, self.mp_fixed = group_norm, mp_fixed
        # Heads of `channels_per_head` channels; narrow (test/MNIST) blocks fall back to one head.
        self.num_heads = max(out_channels // channels_per_head, 1) if attention else 0
        assert not attention or out_channels % self.num_heads == 0
        conv = functools.partial(MPConv, weight_norm=weight_norm)
        self.emb_gain = nn.Parameter(torch.zeros([])) if mp_fixed else None
        # F/G's encoder applies the 1×1 conv first, so its branch runs at the new width (CONFIG F's
        # "more expressive encoder blocks"); ADM's branch (C-E) maps in → out channels itself.
        self.conv_res0 = conv(out_channels if flavor == 'enc' and not group_norm else in_channels, out_channels, [3, 3])
        self.emb_linear = conv(emb_channels, out_channels, [])
        self.conv_res1 = conv(out_channels, out_channels, [3, 3])
        self.conv_skip = conv(in_channels, out_channels, [1, 1]) if in_channels != out_channels else None
        self.attn_qkv = conv(out_channels, 3 * out_channels, [1, 1]) if attention else None
        self.attn_proj = conv(out_channels, out_channels, [1, 1]) if attention else None

    def _join(self, x, y, t):
        """The main path x and a branch y: mp_sum with branch weight t (G), x + y below G."""
        return mp_sum(x, y, t) if self.mp_fixed else x + y

    def forward(self, x, emb, size=None):
        act = mp_silu if self.mp_fixed else F.silu
        if self.group_norm:
            y = self.conv_res0(resample(act(group_rms_norm(x)), self.resample_mode, size))
            y = group_rms_norm(y)
            x = resample(x, self.resample_mode, size)
        else:
            x = resample(x, self.resample_mode, size)
            if self.flavor == 'enc':
                if self.conv_skip is not None:
                    x = self.conv_skip(x)
                # Pixel norm replaces GroupNorm: each pixel's channel vector to unit RMS, which also
                # re-anchors the magnitude after the pooling (averaging shrinks it) at every level.
                x = normalize(x, dim=1)
            y = self.conv_res0(act(x))

        with float32(emb.device):
            c = self.emb_linear(emb, gain=self.emb_gain if self.mp_fixed else 1) + 1  # [B, C]; ≡ 1 at init in G
        y = act(y * c[:, :, None, None].to(y.dtype))
        if self.training and self.dropout:
            y = F.dropout(y, p=self.dropout)
        y = self.conv_res1(y)

        if (self.flavor == 'dec' or self.group_norm) and self.conv_skip is not None:
            x = self.conv_skip(x)
        x = self._join(x, y, self.res_balance)

        if self.num_heads:
            b, ch, h, w = x.shape
            qkv = self.attn_qkv(x).reshape(b, self.num_heads, ch // self.num_heads, 3, h * w)
            q, k, v = normalize(qkv, dim=2).unbind(3)  # each [B, heads, c, HW], unit RMS over c
            # SDPA's default 1/√c scale gives EDM2's logits q·k/√c (cosine similarity × √c).
            y = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
            y = self.attn_proj(y.transpose(-1, -2).reshape(b, ch, h, w))
            x = self._join(x, y, self.attn_balance)

        if self.clip_act is not None:
            x = x.clamp(-self.clip_act, self.clip_act)
        return x


class MPUNet(nn.Module):
    """EDM2's magnitude-preserving UNet F(x, c_noise, class_labels) → [B, img_channels, H, W].

    Args:
        img_resolution: nominal side of the images; with `attn_resolutions` it decides which
            levels have attention (level l has side ⌈img_resolution/2^l⌉: 28, 14, 7, 4, ...).
        img_channels: image channels in and out (1 or 3).
        label_dim: number of classes (0: unconditional).
        model_channels, channel_mult: level l has model_channels·channel_mult[l] channels.
        num_blocks: residual blocks per encoder level (num_blocks + 1 per decoder level).
        attn_resolutions: sides at which blocks have self-attention (the bottleneck's first
            decoder block always has it, as in EDM2).
        dropout: dropout probability inside the residual branches (train mode only).
        label_balance: mp_sum weight of the label embedding against the noise embedding.
        concat_balance: mp_cat weight of the skip connection against the decoder path.
        channel_mult_noise, channel_mult_emb: Fourier / embedding widths in units of
            model_channels (default: the first level's / the widest level's width).
        logvar_channels: Fourier width of the learned loss-weighting head (`logvar`); 0 for none.
        mp_learned, forced_weight_norm, group_norm, mp_fixed: the ablation ladder of EDM2's
            Table 1 (module docstring; LADDER maps C-G to them). Defaults: CONFIG G.
            mp_learned (D): weight-normalised learned layers (else plain, EDM's uniform init).
            forced_weight_norm (E): stored weights rewritten to unit RMS at each training step;
                needs mp_learned.
            group_norm (C-E; False from F on): ADM's blocks with `group_rms_norm`, a two-layer
                embedding MLP and a norm + SiLU before the output conv, instead of F's
                pixel-normalised encoder, one embedding layer and a bare output conv.
            mp_fixed (G): MP Fourier features, MP-SiLU, MP-sum/MP-cat (the balances above), and
                the zero-initialised output and per-block embedding gains; below G: cos features,
                silu, +, torch.cat and no gains.
        **block_kwargs: res_balance, attn_balance, channels_per_head, clip_act (see `Block`).

    forward(x [B, img_channels, H, W], c_noise [B], class_labels [B, label_dim] or None).
    Class labels are one-hot (or soft, summing to 1) and are scaled by √label_dim to unit RMS;
    None or all-zero rows mean "no class" (ignored when label_dim = 0).
    At initialisation the output is exactly 0 (`out_gain` = 0) in G; below G it is not (the paper
    drops zero inits in C, and weight-normalised layers cannot be zero).
    """

    def __init__(self, img_resolution=32, img_channels=3, label_dim=0, model_channels=64, channel_mult=(1, 2, 2),
                 num_blocks=2, attn_resolutions=(8,), dropout=0.0, label_balance=0.5, concat_balance=0.5,
                 channel_mult_noise=None, channel_mult_emb=None, logvar_channels=128,
                 mp_learned=True, forced_weight_norm=True, group_norm=False, mp_fixed=True, **block_kwargs):
        super().__init__()
        if forced_weight_norm and not mp_learned:
            raise ValueError('forced_weight_norm needs mp_learned: forcing the norm of weights that are '
                             'not normalised in the forward pass would rescale the layer each step')
        self.img_resolution, self.img_channels, self.label_dim = img_resolution, img_channels, label_dim
        self.label_balance, self.concat_balance = label_balance, concat_balance
        self.mp_learned, self.forced_weight_norm, self.group_norm, self.mp_fixed = \
            mp_learned, forced_weight_norm, group_norm, mp_fixed
        weight_norm = 'forced' if forced_weight_norm else 'standard' if mp_learned else 'none'
        conv = functools.partial(MPConv, weight_norm=weight_norm)
        cblock = [model_channels * m for m in channel_mult]
        cnoise = model_channels * channel_mult_noise if channel_mult_noise is not None else cblock[0]
        cemb = model_channels * channel_mult_emb if channel_mult_emb is not None else max(cblock)
        block_kwargs = dict(block_kwargs, dropout=dropout, weight_norm=weight_norm, group_norm=group_norm,
                            mp_fixed=mp_fixed)
        sides = [img_resolution]
        for _ in cblock[1:]:
            sides.append(-(-sides[-1] // 2))  # ceil: matches the ceil pooling of odd sides
        self.sides = sides

        # Embedding: Fourier features of c_noise → linear, optionally mixed with the labels.
        self.emb_fourier = MPFourier(cnoise, magnitude_preserving=mp_fixed)
        self.emb_noise = conv(cnoise, cemb, [])
        self.emb_label = conv(label_dim, cemb, []) if label_dim else None
        # C-E: ADM's second embedding layer (silu → linear) before the labels join; F removes it.
        self.emb_noise2 = conv(cemb, cemb, []) if group_norm else None

        # Encoder. The first conv sees the image plus a constant-ones channel (a bias substitute:
        # lets the net know where the borders are and add offsets, with no bias parameters).
        self.enc = nn.ModuleDict()
        cout = img_channels + 1
        for level, channels in enumerate(cblock):
            res = sides[level]
            if level == 0:
                cin, cout = cout, channels
                self.enc[f'{res}x{res}_conv'] = conv(cin, cout, [3, 3])
            else:
                self.enc[f'{res}x{res}_down'] = Block(cout, cout, cemb, flavor='enc', resample_mode='down',
                                                      **block_kwargs)
            for idx in range(num_blocks):
                cin, cout = cout, channels
                self.enc[f'{res}x{res}_block{idx}'] = Block(cin, cout, cemb, flavor='enc',
                                                            attention=res in attn_resolutions, **block_kwargs)

        # Decoder: every encoder output is a skip, consumed by the `block` entries in reverse.
        self.dec = nn.ModuleDict()
        skips = [b.out_channels for b in self.enc.values()]
        for level, channels in reversed(list(enumerate(cblock))):
            res = sides[level]
            if level == len(cblock) - 1:
                self.dec[f'{res}x{res}_in0'] = Block(cout, cout, cemb, flavor='dec', attention=True, **block_kwargs)
                self.dec[f'{res}x{res}_in1'] = Block(cout, cout, cemb, flavor='dec', **block_kwargs)
            else:
                self.dec[f'{res}x{res}_up'] = Block(cout, cout, cemb, flavor='dec', resample_mode='up', **block_kwargs)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), channels
                self.dec[f'{res}x{res}_block{idx}'] = Block(cin, cout, cemb, flavor='dec',
                                                            attention=res in attn_resolutions, **block_kwargs)
        assert not skips
        self.out_conv = conv(cout, img_channels, [3, 3])
        # Zero gain: F ≡ 0 at init, i.e. the EDM denoiser starts as c_skip·x.
        self.out_gain = nn.Parameter(torch.zeros([])) if mp_fixed else None
        self.logvar_head = LogVarHead(logvar_channels, weight_norm=weight_norm, magnitude_preserving=mp_fixed) \
            if logvar_channels else None
        if self.logvar_head is None:
            self.register_load_state_dict_pre_hook(_drop_logvar_head)

    def embedding(self, c_noise, class_labels=None):
        """c_noise [B], class_labels [B, label_dim] or None → emb [B, emb_channels] (≈ unit RMS), in float32."""
        act = mp_silu if self.mp_fixed else F.silu
        with float32(c_noise.device):
            emb = self.emb_noise(self.emb_fourier(c_noise.to(torch.float32)))
            if self.emb_noise2 is not None:
                emb = self.emb_noise2(act(emb))
            if self.emb_label is not None:
                # None means all-zero labels: no class (the label term vanishes), the convention of
                # networks/precond.py for unconditional calls and classifier-free guidance.
                labels = torch.zeros(emb.shape[0], self.label_dim, dtype=emb.dtype, device=emb.device) \
                    if class_labels is None else class_labels.to(emb.dtype)
                label = self.emb_label(labels * math.sqrt(labels.shape[1]))
                emb = mp_sum(emb, label, t=self.label_balance) if self.mp_fixed else emb + label
            return act(emb)

    def features(self, x, c_noise, class_labels=None):
        """The decoder output [B, model_channels·channel_mult[0], H, W] (what `out_conv` sees; in
        C-E through a group norm and a SiLU first)."""
        c_noise = torch.as_tensor(c_noise, device=x.device).to(torch.float32).reshape(-1).expand(x.shape[0])
        emb = self.embedding(c_noise, class_labels)
        x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
        skips = []
        for name, block in self.enc.items():
            x = block(x) if 'conv' in name else block(x, emb)
            skips.append(x)
        for name, block in self.dec.items():
            if 'up' in name:
                x = block(x, emb, size=skips[-1].shape[-2:])
            else:
                if 'block' in name:
                    skip = skips.pop()
                    x = mp_cat(x, skip, t=self.concat_balance) if self.mp_fixed else torch.cat([x, skip], dim=1)
                x = block(x, emb)
        return x

    def forward(self, x, c_noise, class_labels=None):
        x = self.features(x, c_noise, class_labels)
        if self.group_norm:  # C-E: ADM's output block, norm → SiLU → conv
            x = (mp_silu if self.mp_fixed else F.silu)(group_rms_norm(x))
        return self.out_conv(x, gain=self.out_gain if self.mp_fixed else 1)

    def logvar(self, c_noise):
        """The learned per-σ log-variance u(σ) [B] for `uncertainty_weighted_loss` (0 at init)."""
        if self.logvar_head is None:
            raise RuntimeError('this MPUNet was built with logvar_channels=0')
        return self.logvar_head(c_noise)


# ---------------------------------------------------------------------------------------------
# EDM2's learned loss weighting.


class LogVarHead(nn.Module):
    """u(c_noise): [B] → [B], MPFourier → MPConv linear to one channel × a learned gain.

    The gain starts at 0, so u ≡ 0 at init (a unit-norm MPConv cannot be zero itself); the gain
    gets gradient immediately and the direction once the gain is nonzero. `weight_norm` and
    `magnitude_preserving` follow the network's rung of the ladder, as in the paper (Appendix B.2);
    the zero-initialised gain is kept on every rung, so each starts from the plain EDM loss.
    """

    def __init__(self, channels=128, weight_norm='forced', magnitude_preserving=True):
        super().__init__()
        self.fourier = MPFourier(channels, magnitude_preserving=magnitude_preserving)
        self.linear = MPConv(channels, 1, [], weight_norm=weight_norm)
        self.gain = nn.Parameter(torch.zeros([]))

    def forward(self, c_noise):
        """u [B] in float32, as EDM2 computes it under mixed precision."""
        c_noise = torch.as_tensor(c_noise).reshape(-1).to(torch.float32)
        with float32(c_noise.device):
            return self.linear(self.fourier(c_noise), gain=self.gain).reshape(-1)


def _drop_logvar_head(module, state_dict, prefix, *args):
    """Load a state dict that holds a log-variance head into an MPUNet built without one: networks trained
    before `network.learned_weighting: false` stopped building the unused head sample as they did."""
    for key in [key for key in state_dict if key.startswith(f'{prefix}logvar_head.')]:
        del state_dict[key]


def uncertainty_weighted_loss(weighted_sq_err, logvar):
    """EDM2's uncertainty-weighted loss, per sample: L/exp(u) + u.

    weighted_sq_err: [B] or [B, ...], λ(σ)·(D(y; σ) − x)², with λ = 1/c_out² of the
    preconditioning, so it is ≈ 1 per element for an uninformed denoiser. Extra dims are averaged
    to a per-sample mean (EDM2 sums over elements instead, which multiplies L and u alike by the
    element count; the mean keeps u in the units of a per-element weighted error).
    logvar: [B], u(σ) from `LogVarHead`/`MPUNet.logvar`.
    Returns [B]. For fixed L the minimum over u is at u = log L, with value 1 + log L, so training
    u tracks the expected weighted loss at each σ and the gradient on the net is rescaled by
    1/E[L | σ] — every σ then contributes equally (EDM2 §3, "learned uncertainty").
    """
    if weighted_sq_err.ndim > 1:
        weighted_sq_err = weighted_sq_err.flatten(1).mean(1)
    logvar = logvar.reshape(-1).to(weighted_sq_err.dtype)
    return weighted_sq_err / logvar.exp() + logvar


# ---------------------------------------------------------------------------------------------
# The ablation ladder of EDM2 (Table 1, Appendix B): each rung as MPUNet switches. A preset
# 'NAME-C' ... 'NAME-F' is CONFIGS[NAME] (which is G) with one of these entries, nothing else.
# Clipping is G's (NVlabs/edm2's code, which holds only G; the paper's C-F have none): in C the
# activations grow into the hundreds over a long run (paper Fig. 3), where a clip would act.
LADDER = {
    'C': dict(mp_learned=False, forced_weight_norm=False, group_norm=True, mp_fixed=False, clip_act=None),
    'D': dict(mp_learned=True, forced_weight_norm=False, group_norm=True, mp_fixed=False, clip_act=None),
    'E': dict(mp_learned=True, forced_weight_norm=True, group_norm=True, mp_fixed=False, clip_act=None),
    'F': dict(mp_learned=True, forced_weight_norm=True, group_norm=False, mp_fixed=False, clip_act=None),
    'G': dict(mp_learned=True, forced_weight_norm=True, group_norm=False, mp_fixed=True, clip_act=256),
}

# Named configurations (kwargs of MPUNet, network.preset); parameter counts are in the comments
# and in tests/test_mp_unet.py and tests/test_edm2_ladder.py. A preset holds the architecture only:
# the image size and channels come from the data (networks.NETWORKS passes them), and mp_unet()
# adds the ones each preset was sized for (SHAPES).

CONFIGS = {
    # MNIST, 28 px, 3 levels 28 → 14 → 7 (32-64-64 channels), attention at 7×7 only: fast on a
    # CPU (~0.1 s for a forward pass of 3 images on one core). 1,687,543 parameters (129 of them
    # in the logvar head; label_dim=10 adds 640).
    'mnist': dict(model_channels=32, channel_mult=(1, 2, 2), num_blocks=2, attn_resolutions=(7,), dropout=0.1),
    # MNIST on 2 CPU cores (configs/mnist/edm2-*.yaml): 28 → 14 → 7 at 16-32-32 channels, one block
    # per level, attention at 7×7 (one head), no dropout, like the DDPM++ 'ddpmpp-mnist-fast':
    # 300,609 parameters (label_dim=10 adds 320).
    'mnist-small': dict(model_channels=16, channel_mult=(1, 2, 2), num_blocks=1, attn_resolutions=(7,), dropout=0.0),
    # CIFAR-10, 32 px: EDM2-S (model_channels 192, channel_mult 1-2-3-4, 3 blocks per level,
    # attention at 16 and 8) with its four levels placed at 32 → 16 → 8 → 4 instead of 64 → 8;
    # parameters do not depend on the resolution, so this is EDM2-S's size class: 267,055,078
    # parameters (label_dim=10 adds 7,680). EDM2-S has 280 M because at 64 px its attention sits
    # on the two narrowest levels (576 and 768 channels), here on levels 1-2 (384 and 576); with
    # attn_resolutions=(8, 4), 4 channels and 1000 classes this module gives 280.2 M.
    # Dropout 0.13 as in EDM's CIFAR-10 runs (50k images overfit; EDM2 ImageNet used 0-0.1).
    'cifar10': dict(model_channels=192, channel_mult=(1, 2, 3, 4), num_blocks=3, attn_resolutions=(16, 8),
                    dropout=0.13),
}
SHAPES = {'mnist': dict(img_resolution=28, img_channels=1), 'mnist-small': dict(img_resolution=28, img_channels=1),
          'cifar10': dict(img_resolution=32, img_channels=3)}
# The lower rungs of every size: 'mnist-C', 'mnist-small-E', 'cifar10-C', ... Parameters (unconditional,
# with the logvar head): C = D = E and F = G up to G's scalar gains, since D, E and G add no
# weights; mnist C/E 1,673,185 (G 1,687,543), mnist-small C/E 297,009 (G 300,609), cifar10 C/E
# 264,658,881 (G 267,055,078). At the paper's EDM2-S (64 px, 4 channels, 1000 classes, attention
# at 16 and 8): C/E 277,816,641 and G 280,212,838, Table 1's 277.8 M and 280.2 M.
for _base in list(CONFIGS):
    for _rung in 'CDEF':
        CONFIGS[f'{_base}-{_rung}'] = {**CONFIGS[_base], **LADDER[_rung]}
        SHAPES[f'{_base}-{_rung}'] = SHAPES[_base]


def mp_unet(name, **overrides):
    """MPUNet(**SHAPES[name], **CONFIGS[name], **overrides), e.g. mp_unet('cifar10', label_dim=10)."""
    return MPUNet(**{**SHAPES[name], **CONFIGS[name], **overrides})
