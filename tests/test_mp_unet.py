"""The EDM2 magnitude-preserving UNet (networks/mp_unet.py): shapes, magnitude preservation, forced
weight normalisation, conditioning, the learned loss weighting, config sizes and trainability."""

import math

import pytest
import torch

from networks.mp_unet import (CONFIGS, LogVarHead, MPConv, MPFourier, MPUNet, mp_cat, mp_silu, mp_sum, mp_unet,
                              resample, uncertainty_weighted_loss)
from networks.precond import EDMPrecond

# Small enough for milliseconds per call, but with every feature: 3 levels (28 → 14 → 7), attention
# at the bottom, width changes (1×1 skip convs), labels and the logvar head.
TINY = dict(img_resolution=28, img_channels=1, model_channels=8, channel_mult=(1, 2, 2), num_blocks=1,
            attn_resolutions=(7, 8), logvar_channels=16)
SIGMAS = torch.tensor([0.002, 0.05, 0.5, 2.0, 80.0])


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def rms(t):
    return t.detach().float().pow(2).mean().sqrt().item()


def tiny(seed=0, **kwargs):
    torch.manual_seed(seed)
    return MPUNet(**{**TINY, **kwargs})


def open_gains(net, value=1.0):
    """Set every zero-initialised gain (output, per-block embedding) so that all paths matter."""
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith('gain') and not name.startswith('logvar'):
                p.fill_(value)
    return net


@pytest.mark.parametrize('channels,res', [(1, 28), (1, 32), (3, 32)])
@pytest.mark.parametrize('batch', [1, 3])
def test_output_shapes(channels, res, batch):
    net = open_gains(tiny(img_resolution=res, img_channels=channels, label_dim=10))
    x = torch.randn(batch, channels, res, res, generator=gen())
    labels = torch.eye(10)[torch.arange(batch) % 10]
    out = net(x, torch.randn(batch, generator=gen(1)), labels)
    assert out.shape == (batch, channels, res, res) and out.isfinite().all()
    assert net.logvar(torch.zeros(batch)).shape == (batch,)


def test_odd_sizes_four_levels_and_the_named_configs():
    # 28 → 14 → 7 → 4 → (up) 8 cropped to 7 → 14 → 28.
    net = tiny(channel_mult=(1, 2, 2, 2))
    assert net.sides == [28, 14, 7, 4]
    assert net(torch.randn(2, 1, 28, 28), torch.zeros(2)).shape == (2, 1, 28, 28)
    net = mp_unet('mnist').eval()
    assert net(torch.randn(3, 1, 28, 28), torch.zeros(3)).shape == (3, 1, 28, 28)
    # Any size runs; img_resolution only places attention.
    assert net(torch.randn(1, 1, 32, 32), torch.zeros(1)).shape == (1, 1, 32, 32)


def test_resampling_odd_sides_is_consistent():
    x = torch.randn(2, 3, 7, 7, generator=gen())
    down = resample(x, 'down')
    assert down.shape == (2, 3, 4, 4)
    # The ragged last cells average existing pixels only: a constant image stays constant.
    torch.testing.assert_close(resample(torch.full((1, 1, 7, 7), 2.0), 'down'), torch.full((1, 1, 4, 4), 2.0))
    torch.testing.assert_close(down[..., 3, 3], x[..., 6, 6])
    # Up with the skip's size inverts the pooling grid: every pixel gets its own cell's value.
    up = resample(down, 'up', size=(7, 7))
    assert up.shape == (2, 3, 7, 7)
    torch.testing.assert_close(resample(up, 'down'), down)
    assert resample(x, 'up').shape == (2, 3, 14, 14)


def test_primitives_preserve_unit_magnitude():
    a, b = torch.randn(2, 200_000, generator=gen())
    for t in (0.0, 0.3, 0.5, 0.8):
        assert rms(mp_sum(a, b, t)) == pytest.approx(1, abs=0.01)
    assert rms(mp_silu(a)) == pytest.approx(1, abs=0.01)
    # mp_cat: unit overall magnitude for any widths, and the parts' energies in the ratio (1−t)² : t².
    x, y = torch.randn(4000, 3, generator=gen(1)), torch.randn(4000, 29, generator=gen(2))
    for t in (0.3, 0.5, 0.7):
        z = mp_cat(x, y, dim=1, t=t)
        assert z.shape == (4000, 32) and rms(z) == pytest.approx(1, abs=0.02)
        share = z[:, :3].pow(2).sum() / z.pow(2).sum()
        assert share.item() == pytest.approx((1 - t) ** 2 / ((1 - t) ** 2 + t ** 2), abs=0.02)
    # Fourier features: unit RMS over channels, fixed (buffers) and reproduced by a state dict.
    f = MPFourier(512)
    assert rms(f(torch.linspace(-1.6, 1.1, 50))) == pytest.approx(1, abs=0.05)
    g = MPFourier(512)
    g.load_state_dict(f.state_dict())
    torch.testing.assert_close(g(torch.ones(3)), f(torch.ones(3)))
    # MPConv: unit-variance input → unit-variance output, for conv and linear, at any stored scale.
    conv = MPConv(64, 32, [3, 3])
    with torch.no_grad():
        conv.weight.mul_(7.0)
    assert rms(conv(torch.randn(8, 64, 16, 16, generator=gen(3)))) == pytest.approx(1, abs=0.1)
    assert rms(MPConv(256, 128, [])(torch.randn(512, 256, generator=gen(4)))) == pytest.approx(1, abs=0.1)


def test_activations_keep_unit_magnitude_at_init():
    """Unit-variance input: every block output and the decoder output (what the zero-gain output
    conv sees) have RMS within 20% of 1, at every σ (the embedding gains are 0 at init)."""
    torch.manual_seed(0)
    net = mp_unet('mnist').eval()
    seen = {}
    for name, block in [('enc.' + n, b) for n, b in net.enc.items()] + [('dec.' + n, b) for n, b in net.dec.items()]:
        block.register_forward_hook(lambda m, i, o, name=name: seen.setdefault(name, []).append(rms(o)))
    x = torch.randn(2, 1, 28, 28, generator=gen())
    with torch.no_grad():
        for sigma in SIGMAS[[0, 2, 4]]:
            features = net.features(x, (sigma.log() / 4).expand(2))
            assert rms(features) == pytest.approx(1, abs=0.2)
    values = torch.tensor([v for vs in seen.values() for v in vs])
    assert len(seen) == len(net.enc) + len(net.dec)
    # Block by block the magnitude is kept only in expectation over the random weights: each
    # output is a random projection of spatially correlated features, and at 7×7 zero padding
    # touches half the pixels. Over seeds 0-9 single blocks ranged 0.75-1.34, the decoder output
    # 0.86-1.05; on average there is no drift.
    assert values.log().mean().exp().item() == pytest.approx(1, abs=0.1)
    assert values.min() > 0.75 and values.max() < 1.25, seen
    # The embedding itself is unit-magnitude too (Fourier → unit-norm linear → mp_silu).
    assert rms(net.embedding(SIGMAS.log() / 4)) == pytest.approx(1, abs=0.2)


def mpconvs(net):
    return [m for m in net.modules() if isinstance(m, MPConv)]


def row_rms(w):
    return w.detach().flatten(1).pow(2).mean(1).sqrt()


def test_forced_weight_normalisation():
    net = open_gains(tiny(label_dim=10), 0.5).train()
    convs = mpconvs(net)
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    x, labels = torch.randn(4, 1, 28, 28, generator=gen()), torch.eye(10)[:4]
    for step in range(2):
        loss = net(x, torch.linspace(-1, 1, 4), labels).pow(2).mean() + net.logvar(torch.zeros(4)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    # The Adam step moved the stored weights off the unit-RMS sphere ...
    assert max((row_rms(c.weight) - 1).abs().max().item() for c in convs) > 1e-3
    with torch.no_grad():
        net.eval()(x, torch.zeros(4), labels)
    assert max((row_rms(c.weight) - 1).abs().max().item() for c in convs) > 1e-3  # eval never writes
    # ... and the next training forward (of each layer: the logvar head is called separately)
    # pulls every one of them back, per output channel.
    with torch.no_grad():
        net.train()(x, torch.zeros(4), labels)
        net.logvar(torch.zeros(4))
    for c in convs:
        torch.testing.assert_close(row_rms(c.weight), torch.ones(c.out_channels), atol=1e-3, rtol=0)
        # Effective weight: elements of scale 1/√fan_in, i.e. unit L2 norm per output channel.
        w = c.effective_weight()
        torch.testing.assert_close(row_rms(w) * math.sqrt(c.fan_in), torch.ones(c.out_channels), atol=1e-3, rtol=0)
        torch.testing.assert_close(w.flatten(1).norm(dim=1), torch.ones(c.out_channels), atol=1e-3, rtol=0)
    # The write happens once per change: a step may call the net twice before backward (an
    # unconditional write would invalidate the first call's saved weights).
    versions = [c.weight._version for c in convs]
    loss = sum(net(x, torch.full((4,), c), labels).pow(2).mean() for c in (-1.0, 1.0))
    loss.backward()
    assert [c.weight._version for c in convs] == versions
    # The layer is blind to the stored scale (hence Adam would grow it without the rewrite).
    conv = convs[3]
    y = conv.eval()(torch.ones(1, conv.in_channels, 5, 5))
    with torch.no_grad():
        conv.weight.mul_(10)
    torch.testing.assert_close(conv(torch.ones(1, conv.in_channels, 5, 5)), y, atol=1e-3, rtol=1e-3)


def test_zero_output_at_init_and_conditioning():
    net = tiny(label_dim=10).eval()
    x = torch.randn(3, 1, 28, 28, generator=gen())
    labels = torch.eye(10)[[0, 3, 7]]
    c_noise = SIGMAS[:3].log() / 4
    assert net(x, c_noise, labels).abs().max().item() == 0
    open_gains(net)
    same_x = x[:1].expand(3, -1, -1, -1)
    out = net(same_x, c_noise, labels[:1].expand(3, -1))
    for i in (1, 2):  # σ changes the output ...
        assert (out[i] - out[0]).abs().max() > 1e-3
    out = net(same_x, torch.zeros(3), labels)
    for i in (1, 2):  # ... and so does the class
        assert (out[i] - out[0]).abs().max() > 1e-3
    # No labels = all-zero labels ("no class", as networks/precond.py passes for unconditional use).
    torch.testing.assert_close(net(x, c_noise), net(x, c_noise, torch.zeros(3, 10)))
    assert (net(x, c_noise) - net(x, c_noise, labels)).abs().max() > 1e-3
    # A scalar c_noise broadcasts over the batch.
    torch.testing.assert_close(net(x, torch.tensor(0.3), labels), net(x, torch.full((3,), 0.3), labels))


def test_works_inside_edm_precond():
    net = open_gains(tiny(img_channels=3, img_resolution=32)).eval()
    denoiser = EDMPrecond(net)
    x = torch.randn(2, 3, 32, 32, generator=gen())
    assert denoiser(x, torch.tensor([0.1, 5.0])).shape == x.shape
    net = open_gains(tiny(label_dim=10)).eval()
    x, labels = torch.randn(2, 1, 28, 28, generator=gen()), torch.eye(10)[[1, 2]]
    try:
        out = EDMPrecond(net)(x, 0.5, labels)
    except TypeError:
        pytest.skip('networks/precond.py does not pass class labels')
    # σ = σ_data = 0.5: c_skip = 1/2, c_out = √(1/8), c_in = √2, c_noise = log(0.5)/4.
    expected = 0.5 * x + math.sqrt(0.125) * net(math.sqrt(2) * x, torch.full((2,), math.log(0.5) / 4), labels)
    torch.testing.assert_close(out, expected)


def test_logvar_and_uncertainty_weighted_loss():
    head = LogVarHead(32)
    c_noise = SIGMAS.log() / 4
    assert head(c_noise).shape == (5,) and head(c_noise).abs().max().item() == 0
    # At u = 0 the loss is unchanged; the minimum over u is at u = log L (value 1 + log L).
    err = torch.tensor([0.05, 0.3, 1.0, 4.0])
    torch.testing.assert_close(uncertainty_weighted_loss(err, torch.zeros(4)), err)
    grid = torch.linspace(-5, 3, 8001)
    for e in err.tolist():
        values = uncertainty_weighted_loss(torch.full_like(grid, e), grid)
        assert grid[values.argmin()].item() == pytest.approx(math.log(e), abs=2e-3)
        assert values.min().item() == pytest.approx(1 + math.log(e), abs=1e-5)
    u = err.log().requires_grad_()
    uncertainty_weighted_loss(err, u).sum().backward()
    torch.testing.assert_close(u.grad, torch.zeros(4), atol=1e-6, rtol=0)
    # Per-element errors are reduced to per-sample means.
    per_pixel = torch.rand(4, 1, 5, 5, generator=gen())
    torch.testing.assert_close(uncertainty_weighted_loss(per_pixel, torch.zeros(4)), per_pixel.mean((1, 2, 3)))
    # Trainable: fitting a σ-dependent loss level L(σ) = exp(c_noise) moves u towards log L.
    head.train()
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    target = c_noise.exp()
    for _ in range(150):
        loss = uncertainty_weighted_loss(target, head(c_noise)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert head.gain.item() != 0
    assert (head(c_noise) - c_noise).abs().max().item() < 0.3


def test_parameter_counts():
    counts = {}
    for name in CONFIGS:
        with torch.device('meta'):  # no memory, no init: the CIFAR net has ~267 M parameters
            counts[name] = sum(p.numel() for p in mp_unet(name).parameters())
    with torch.device('meta'):  # EDM2-S itself: 64 px latents (4 channels), 1000 classes, attention at 16 and 8
        edm2_s = sum(p.numel() for p in mp_unet('cifar10', img_channels=4, label_dim=1000,
                                                attn_resolutions=(8, 4)).parameters())
    print('MPUNet parameters:', counts, 'EDM2-S layout:', edm2_s)
    assert 1e6 <= counts['mnist'] <= 5e6  # measured 1,687,543
    assert 250e6 <= counts['cifar10'] <= 290e6  # measured 267,055,078
    assert edm2_s == pytest.approx(280e6, rel=0.01)  # the paper's 280 M


def test_a_few_steps_reduce_a_denoising_loss():
    torch.manual_seed(0)
    net = tiny(img_resolution=16, channel_mult=(1, 2), attn_resolutions=(8,)).train()
    denoiser = EDMPrecond(net)
    # Smooth structured images: random low-frequency patterns, upsampled.
    images = 0.5 * resample(torch.randn(8, 1, 4, 4, generator=gen()), 'up')
    images = resample(images, 'up')  # [8, 1, 16, 16]
    sigma = torch.full((8,), 0.5)
    noise = torch.randn(images.shape, generator=gen(1))

    def loss():
        d = denoiser(images + sigma[:, None, None, None] * noise, sigma)
        return (denoiser.loss_weight(sigma)[:, None, None, None] * (d - images) ** 2).mean()

    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    first = loss().item()
    for _ in range(25):
        value = loss()
        opt.zero_grad()
        value.backward()
        opt.step()
    assert loss().item() < 0.8 * first


def test_backward_under_bf16_autocast():
    net = open_gains(tiny(label_dim=10), 0.5).train()
    x = torch.randn(2, 1, 28, 28, generator=gen())
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = net(x, torch.tensor([-1.0, 0.5]), torch.eye(10)[:2])
        loss = uncertainty_weighted_loss((out - x).float() ** 2, net.logvar(torch.tensor([-1.0, 0.5]))).mean()
    loss.backward()
    assert loss.isfinite()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and g.isfinite().all() for g in grads)
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert net.out_gain.grad.abs() > 0 and net.enc['28x28_conv'].weight.grad.abs().max() > 0
