"""The DDPM++ U-Net of the EDM paper (Karras et al. 2022), for images.

This is the "SongUNet" architecture with the DDPM++ settings that EDM uses for CIFAR-10
(config F: `channel_mult=(2, 2, 2)`, 4 residual blocks per resolution, self-attention at
16×16, positional noise embedding, additive embedding, box resampling filter, dropout 0.13).
It is written from the paper's description and builds the same layers as NVlabs/edm's
SongUNet: 55,732,739 parameters for CIFAR-10, the paper's 55.73 M (tests/test_unet.py).

The raw network is called by the preconditioners of networks/precond.py as
F(c_in·x, c_noise): x [B, C, H, W], c_noise [B] (log(σ)/4 for EDM, (M−1)·t ∈ [0, 999] for VP,
log(σ/2) for VE), and optional one-hot class labels [B, label_dim].

Layout (DDPM++ for 32 px, `channel_mult=(2, 2, 2)`, 128 base channels):

    noise embedding:  c_noise → sinusoids (128) [+ label map] → Linear → SiLU → Linear → SiLU (512)
    encoder:  conv3×3 (C→128) @32 → 4 blocks (→256) @32
              → down block @16 → 4 blocks with attention @16
              → down block @8  → 4 blocks @8
    decoder:  block with attention + block @8 (the bottleneck)
              → 5 blocks @8 (each concatenates one encoder activation)
              → up block @16 → 5 blocks @16 (the last with attention)
              → up block @32 → 5 blocks @32
              → GroupNorm → SiLU → conv3×3 (→C)

Odd resolutions (e.g. MNIST at 28 px): each downsampling halves the size rounding *up*
(28 → 14 → 7 → 4 …): an odd row/column is completed by repeating the last one before
filtering, so with the box filter the last output pixel is the mean of the valid pixels only.
Each upsampling doubles the size and then crops to the size of the encoder activation it
is concatenated with (4 → 8 → 7), so any input size H × W (also non-square) comes back with
its own size. With the 3-level configs a 28 px input goes 28 → 14 → 7 and 7 is the bottom.
"""

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

# Named architectures. Image size and channels come from the data set, so they are not part
# of a config: UNet(**CONFIGS[name], img_resolution=..., in_channels=...) or build_unet().
CONFIGS = {
    # EDM paper, CIFAR-10, config F with the DDPM++ architecture (train.py --arch=ddpmpp
    # of NVlabs/edm): 55,732,739 parameters unconditional, the paper's 55.73 M (+1408 with
    # 10 class labels).
    'ddpmpp-cifar10': dict(model_channels=128, channel_mult=(2, 2, 2), num_blocks=4,
                           attn_resolutions=(16,), dropout=0.13),
    # A small DDPM++ for 1-channel 28 or 32 px images (MNIST, Fashion-MNIST): 2.21 M
    # parameters, the CIFAR-10 layout at a quarter of the width and half the depth.
    # Attention at the middle level for both sizes (14 or 16 px), plus the bottleneck
    # attention at 7 or 8 px that every config has.
    'ddpmpp-mnist-small': dict(model_channels=32, channel_mult=(2, 2, 2), num_blocks=2,
                               attn_resolutions=(14, 16), dropout=0.10),
    # The fastest recognisable digits on 2 CPU cores (configs/mnist/fast.yaml): 28 px, levels
    # 28 → 14 → 7 at 16-32-32 channels, one block per level, attention only in the bottleneck.
    'ddpmpp-mnist-fast': dict(model_channels=16, channel_mult=(1, 2, 2), num_blocks=1,
                              attn_resolutions=(), dropout=0.0),
    # For tests: 80 k parameters, still three levels (28 → 14 → 7) and attention.
    'ddpmpp-tiny': dict(model_channels=8, channel_mult=(1, 2, 2), num_blocks=1,
                        attn_resolutions=(14, 16), dropout=0.0),
}


def build_unet(name, **overrides):
    """A `UNet` from a named config in `CONFIGS`, with keyword overrides (e.g. in_channels=1)."""
    if name not in CONFIGS:
        raise KeyError(f'unknown UNet config {name!r}; known: {sorted(CONFIGS)}')
    return UNet(**{**CONFIGS[name], **overrides})


def _xavier(layer, gain=1.0):
    """EDM's init: xavier-uniform weights times `gain`, zero biases.

    gain=1e-5 is EDM's "zero" init for the last conv of each residual branch and for the
    output conv: each block starts as (almost) the identity of its skip path, and F ≈ 0 at
    init, yet every weight still gets a (tiny) gradient through them on the first step.
    """
    nn.init.xavier_uniform_(layer.weight)
    with torch.no_grad():
        layer.weight.mul_(gain)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


def group_norm(channels, eps=1e-6, max_groups=32, min_channels_per_group=4):
    """GroupNorm with 32 groups, or fewer for small channel counts.

    As in EDM, a group holds at least 4 channels (so 16 channels → 4 groups); unlike EDM the
    count is then lowered to a divisor of `channels`, so odd channel counts (e.g. 18 or 3)
    work instead of raising.
    """
    groups = max(1, min(max_groups, channels // min_channels_per_group))
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(groups, channels, eps=eps)


class Resample(nn.Module):
    """2× down- or upsampling with a separable FIR filter (depthwise, no parameters).

    `filter=(1, 1)` (DDPM++) is 2×2 average pooling / nearest-neighbour upsampling;
    `(1, 3, 3, 1)` is NCSN++'s smoother filter. Down: output size ceil(n/2), odd inputs
    having their last row/column repeated. Up: output size 2n, cropped to `size` if given.
    """

    def __init__(self, mode, filter=(1, 1)):
        super().__init__()
        if mode not in ('up', 'down'):
            raise ValueError(f'mode must be "up" or "down", not {mode!r}')
        self.mode = mode
        f = torch.as_tensor(filter, dtype=torch.float32)
        f = torch.outer(f, f) / f.sum() ** 2          # unit DC gain for the downsampler
        self.register_buffer('filter', f[None, None], persistent=False)
        self.pad = (f.shape[-1] - 1) // 2

    def forward(self, x, size=None):
        """x [B, C, H, W] → [B, C, ceil(H/2), ceil(W/2)] (down) or [B, C, *size or (2H, 2W)] (up)."""
        c = x.shape[1]
        f = self.filter.to(x.dtype).expand(c, 1, *self.filter.shape[-2:])
        if self.mode == 'down':
            h, w = x.shape[-2:]
            if h % 2 or w % 2:
                x = F.pad(x, (0, w % 2, 0, h % 2), mode='replicate')
            return F.conv2d(x, f, stride=2, padding=self.pad, groups=c)
        # ×4 because each output pixel of the transposed conv sees a quarter of the taps.
        x = F.conv_transpose2d(x, f * 4, stride=2, padding=self.pad, groups=c)
        if size is not None:
            x = x[..., :size[0], :size[1]]
        return x


class Attention(nn.Module):
    """Self-attention over the H·W positions, as a residual branch (pre-GroupNorm).

    [B, C, H, W] → [B, C, H, W]. q, k, v come from a 1×1 conv; the output projection is
    zero-initialised so the branch starts as the identity. Uses scaled_dot_product_attention
    (fused kernels where available; under autocast the softmax still accumulates in fp32).
    """

    def __init__(self, channels, num_heads=1, eps=1e-6):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f'{channels} channels do not split into {num_heads} heads')
        self.num_heads = num_heads
        self.norm = group_norm(channels, eps)
        # EDM scales the q/k/v init by sqrt(0.2) to keep the initial logits small.
        self.qkv = _xavier(nn.Conv2d(channels, 3 * channels, 1), gain=math.sqrt(0.2))
        self.proj = _xavier(nn.Conv2d(channels, channels, 1), gain=1e-5)

    def forward(self, x):
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w)
        q, k, v = qkv.transpose(-1, -2).unbind(1)     # each [B, heads, HW, C/heads]
        a = F.scaled_dot_product_attention(q, k, v)
        return self.proj(a.transpose(-1, -2).reshape(b, c, h, w))


class UNetBlock(nn.Module):
    """DDPM++ residual block, optionally resampling and optionally followed by attention.

    x [B, Cin, H, W], emb [B, E] → [B, Cout, H', W'] (H' = ceil(H/2) if down; 2H, cropped to
    `size`, if up):

        h = conv3×3(SiLU(GN(x)))            (resampled before the conv when up/down)
        h = SiLU(GN(h + Linear(emb)))       (adaptive_scale=False: additive, as in DDPM++)
            or SiLU(GN(h)·(1 + scale) + shift)     (adaptive_scale=True, ADM style)
        h = conv3×3(dropout(h))             (≈ zero init)
        x = (h + skip(x)) / √2              skip: identity, or resample + 1×1 conv
        x = (x + Attention(x)) / √2         if attention

    The 1/√2 keeps the variance of the residual stream from growing with depth.
    """

    def __init__(self, in_channels, out_channels, emb_channels, up=False, down=False,
                 attention=False, num_heads=1, dropout=0.0, adaptive_scale=False,
                 resample_filter=(1, 1), eps=1e-6):
        super().__init__()
        if up and down:
            raise ValueError('a block resamples up or down, not both')
        self.in_channels, self.out_channels = in_channels, out_channels
        self.dropout, self.adaptive_scale = dropout, adaptive_scale
        self.resample = Resample('up' if up else 'down', resample_filter) if up or down else None
        self.norm0 = group_norm(in_channels, eps)
        self.conv0 = _xavier(nn.Conv2d(in_channels, out_channels, 3, padding=1))
        self.affine = _xavier(nn.Linear(emb_channels, out_channels * (2 if adaptive_scale else 1)))
        self.norm1 = group_norm(out_channels, eps)
        self.conv1 = _xavier(nn.Conv2d(out_channels, out_channels, 3, padding=1), gain=1e-5)
        # DDPM++ projects the skip with a 1×1 conv whenever the shape changes (resample_proj).
        self.skip = (_xavier(nn.Conv2d(in_channels, out_channels, 1))
                     if in_channels != out_channels or up or down else None)
        self.attn = Attention(out_channels, num_heads, eps) if attention else None

    def _resample(self, x, size):
        return x if self.resample is None else self.resample(x, size)

    def forward(self, x, emb, size=None):
        h = self.conv0(self._resample(F.silu(self.norm0(x)), size))
        params = self.affine(emb)[:, :, None, None].to(h.dtype)
        if self.adaptive_scale:
            scale, shift = params.chunk(2, dim=1)
            h = F.silu(torch.addcmul(shift, self.norm1(h), scale + 1))
        else:
            h = F.silu(self.norm1(h + params))
        h = self.conv1(F.dropout(h, p=self.dropout, training=self.training))
        skip = self._resample(x, size)
        if self.skip is not None:
            skip = self.skip(skip)
        x = (h + skip) * math.sqrt(0.5)
        if self.attn is not None:
            x = (x + self.attn(x)) * math.sqrt(0.5)
        return x


class PositionalEmbedding(nn.Module):
    """Transformer-style sinusoids of c_noise: [B] → [B, num_channels] (sin half, cos half).

    Frequencies are geometric from 1 down to 1/max_positions (both ends included, EDM's
    `endpoint=True`). They suit both VP's c_noise ∈ [0, 999] and EDM's log(σ)/4 ∈ ~[−1.6, 1.1]:
    in the latter the low frequencies act as (nearly) linear features of log σ.
    """

    def __init__(self, num_channels, max_positions=10000):
        super().__init__()
        half = num_channels // 2
        freqs = (1 / max_positions) ** (torch.arange(half, dtype=torch.float32) / max(half - 1, 1))
        self.register_buffer('freqs', freqs, persistent=False)

    def forward(self, c):
        angles = c[:, None] * self.freqs.to(c.dtype)
        return torch.cat([angles.sin(), angles.cos()], dim=1)


class FourierEmbedding(nn.Module):
    """NCSN++'s random Fourier features of c_noise: [B] → [B, num_channels] (cos half, sin half).

    Frequencies ~ N(0, scale²) are drawn at construction and stored with the model.
    """

    def __init__(self, num_channels, scale=16):
        super().__init__()
        self.register_buffer('freqs', torch.randn(num_channels // 2) * scale)

    def forward(self, c):
        angles = c[:, None] * (2 * math.pi * self.freqs.to(c.dtype))
        return torch.cat([angles.cos(), angles.sin()], dim=1)


class UNet(nn.Module):
    """DDPM++ U-Net F(x, c_noise, class_labels) → [B, out_channels, H, W].

    Arguments (DDPM++ defaults):
        img_resolution: nominal input size; it only decides which levels have attention
            (level l has resolution ceil(img_resolution / 2^l)). forward() takes any H × W.
        in_channels, out_channels (default in_channels): image channels.
        label_dim: number of classes; 0 = unconditional.
        model_channels: base width; level l has model_channels·channel_mult[l] channels.
        channel_mult: one multiplier per resolution level (len = number of levels).
        channel_mult_emb: embedding width = model_channels·channel_mult_emb (4 in EDM).
        num_blocks: residual blocks per level in the encoder (the decoder has one more).
        attn_resolutions: level resolutions with self-attention after each block (after the
            last decoder block only, as in DDPM++). Entries matching no level are ignored,
            with a warning if none matches (so one config can list (14, 16) for 28 and 32 px).
            The bottleneck always has one attention block.
        num_heads: attention heads (1 in DDPM++).
        dropout: dropout before the second conv of every residual block.
        label_dropout: probability of zeroing a sample's label in training (for classifier-free
            guidance; zero labels are the unconditional input).
        embedding_type: 'positional' (DDPM++) or 'fourier' (NCSN++) features of c_noise.
        channel_mult_noise: width of those features = model_channels·channel_mult_noise.
        resample_filter: (1, 1) (DDPM++) or (1, 3, 3, 1) (NCSN++).
        adaptive_scale: False (DDPM++): the embedding is added to the features; True: it
            gives a per-channel scale and shift after the GroupNorm.
    """

    def __init__(self, img_resolution=32, in_channels=3, out_channels=None, label_dim=0,
                 model_channels=128, channel_mult=(2, 2, 2), channel_mult_emb=4, num_blocks=4,
                 attn_resolutions=(16,), num_heads=1, dropout=0.10, label_dropout=0.0,
                 embedding_type='positional', channel_mult_noise=1, resample_filter=(1, 1),
                 adaptive_scale=False):
        super().__init__()
        if embedding_type not in ('positional', 'fourier'):
            raise ValueError(f'embedding_type must be "positional" or "fourier", not {embedding_type!r}')
        if not channel_mult:
            raise ValueError('channel_mult needs at least one level')
        out_channels = in_channels if out_channels is None else out_channels
        self.img_resolution, self.in_channels, self.out_channels = img_resolution, in_channels, out_channels
        self.label_dim, self.label_dropout = label_dim, label_dropout
        emb_channels = model_channels * channel_mult_emb
        noise_channels = model_channels * channel_mult_noise
        block = dict(emb_channels=emb_channels, num_heads=num_heads, dropout=dropout,
                     adaptive_scale=adaptive_scale, resample_filter=resample_filter)

        # Level resolutions, rounding up like Resample does (28 → 14 → 7 → 4).
        self.level_resolutions = [img_resolution]
        for _ in channel_mult[1:]:
            self.level_resolutions.append(-(-self.level_resolutions[-1] // 2))
        attn_levels = [res in attn_resolutions for res in self.level_resolutions]
        if attn_resolutions and not any(attn_levels):
            warnings.warn(f'attn_resolutions {tuple(attn_resolutions)} match none of the level '
                          f'resolutions {self.level_resolutions}: no attention outside the bottleneck')

        # Noise (and label) embedding → emb [B, emb_channels], shared by all blocks.
        self.map_noise = (PositionalEmbedding(noise_channels) if embedding_type == 'positional'
                          else FourierEmbedding(noise_channels))
        self.map_label = _xavier(nn.Linear(label_dim, noise_channels)) if label_dim else None
        self.map_layer0 = _xavier(nn.Linear(noise_channels, emb_channels))
        self.map_layer1 = _xavier(nn.Linear(emb_channels, emb_channels))

        # Encoder: every module's output is kept for the decoder's skip connections.
        self.enc = nn.ModuleList()
        cout = model_channels
        self.enc.append(_xavier(nn.Conv2d(in_channels, cout, 3, padding=1)))
        skips = [cout]
        for level, mult in enumerate(channel_mult):
            if level > 0:
                self.enc.append(UNetBlock(cout, cout, down=True, **block))
                skips.append(cout)
            for _ in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc.append(UNetBlock(cin, cout, attention=attn_levels[level], **block))
                skips.append(cout)

        # Decoder: bottleneck, then per level (coarse to fine) an upsampling block (except at the
        # bottom) and num_blocks + 1 blocks that each concatenate one encoder activation.
        self.dec = nn.ModuleList()
        self.dec_takes_skip = []
        self.dec.append(UNetBlock(cout, cout, attention=True, **block))
        self.dec.append(UNetBlock(cout, cout, **block))
        self.dec_takes_skip += [False, False]
        for level in reversed(range(len(channel_mult))):
            if level < len(channel_mult) - 1:
                self.dec.append(UNetBlock(cout, cout, up=True, **block))
                self.dec_takes_skip.append(False)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * channel_mult[level]
                attn = attn_levels[level] and idx == num_blocks
                self.dec.append(UNetBlock(cin, cout, attention=attn, **block))
                self.dec_takes_skip.append(True)
        assert not skips
        self.out_norm = group_norm(cout)
        self.out_conv = _xavier(nn.Conv2d(cout, out_channels, 3, padding=1), gain=1e-5)

    def embed(self, c_noise, class_labels, batch_size, device):
        """emb [B, emb_channels] from c_noise [B] (or a scalar) and labels [B, label_dim] / None."""
        dtype = self.map_layer0.weight.dtype
        c = torch.as_tensor(c_noise, device=device).to(dtype).reshape(-1)
        if c.numel() == 1:
            c = c.expand(batch_size)
        if c.shape[0] != batch_size:
            raise ValueError(f'c_noise has {c.shape[0]} entries for a batch of {batch_size}')
        emb = self.map_noise(c)
        if self.map_label is not None:
            if class_labels is None:        # no labels: the unconditional (all-zero) input
                labels = torch.zeros(batch_size, self.label_dim, device=device, dtype=dtype)
            elif not class_labels.is_floating_point():
                labels = F.one_hot(class_labels.reshape(-1).long(), self.label_dim).to(dtype)
            else:
                labels = class_labels.to(dtype).reshape(batch_size, self.label_dim)
            if self.training and self.label_dropout:
                keep = torch.rand(batch_size, 1, device=device) >= self.label_dropout
                labels = labels * keep.to(dtype)
            # √label_dim makes a one-hot vector unit-variance per entry on average (as EDM).
            emb = emb + self.map_label(labels * math.sqrt(self.label_dim))
        elif class_labels is not None:
            raise ValueError('class_labels given to a UNet built with label_dim=0')
        emb = F.silu(self.map_layer0(emb))
        return F.silu(self.map_layer1(emb))

    def forward(self, x, c_noise, class_labels=None):
        """x [B, in_channels, H, W]; c_noise [B]; class_labels [B, label_dim] one-hot (float),
        [B] integer classes, or None (= zeros = unconditional). Returns [B, out_channels, H, W]."""
        emb = self.embed(c_noise, class_labels, x.shape[0], x.device)
        skips = []
        for i, module in enumerate(self.enc):
            x = module(x) if i == 0 else module(x, emb)
            skips.append(x)
        for module, takes_skip in zip(self.dec, self.dec_takes_skip):
            if takes_skip:
                x = torch.cat([x, skips.pop()], dim=1)
                x = module(x, emb)
            else:
                # An up block must land on the size of the activation it is concatenated with
                # next (matters only for odd sizes: 4 → 7 rather than 8).
                x = module(x, emb, size=skips[-1].shape[-2:] if module.resample is not None else None)
        return self.out_conv(F.silu(self.out_norm(x)))
