"""The DDPM++ U-Net (networks/unet.py): shapes, size, conditioning, training sanity, bf16."""

import warnings

import pytest
import torch

from networks.precond import EDMPrecond
from networks.unet import CONFIGS, Resample, UNetBlock, build_unet

# Model capacity the EDM paper (Karras et al. 2022, appendix hyperparameter table) reports for
# its DDPM++ CIFAR-10 network: 55.73 M parameters. networks/unet.py builds the same layers as
# NVlabs/edm's SongUNet and counts 55,732,739 (unconditional).
EDM_DDPMPP_CIFAR10_PARAMS = 55.73e6


def num_params(model):
    return sum(p.numel() for p in model.parameters())


def tiny(**overrides):
    """The test config (80 k parameters), deterministic: dropout 0 and a fixed seed."""
    torch.manual_seed(0)
    return build_unet('ddpmpp-tiny', **{'in_channels': 1, 'img_resolution': 28, **overrides})


def perturb_output(model, seed=1):
    """Give the ≈ zero-initialised layers (the output conv, the last conv of every residual
    branch, the attention projections) O(1) xavier weights, so that F's dependence on its
    inputs shows: at init the embedding only acts through them, at 1e-5 of the scale."""
    torch.manual_seed(seed)
    layers = [model.out_conv]
    for block in model.modules():
        if isinstance(block, UNetBlock):
            layers.append(block.conv1)
            if block.attn is not None:
                layers.append(block.attn.proj)
    for layer in layers:
        torch.nn.init.xavier_uniform_(layer.weight)
    return model


@pytest.mark.parametrize('channels, size', [(1, 28), (1, 32), (3, 32)])
@pytest.mark.parametrize('batch', [1, 3])
def test_output_shape(channels, size, batch):
    net = tiny(in_channels=channels, img_resolution=size).eval()
    x = torch.randn(batch, channels, size, size)
    y = net(x, torch.randn(batch))
    assert y.shape == x.shape and y.dtype == x.dtype and y.isfinite().all()
    # F ≈ 0 at init (the output conv starts at 1e-5 of xavier): the denoiser starts near c_skip·x.
    assert y.abs().max() < 1e-3


def test_resolutions_odd_sizes_and_out_channels():
    assert tiny(img_resolution=28).level_resolutions == [28, 14, 7]  # 7 is the bottom
    assert tiny(img_resolution=32).level_resolutions == [32, 16, 8]
    net = tiny(out_channels=2).eval()
    # Non-square, odd sizes: down 27×13 → 14×7 → 7×4, up again with crops back to 27×13.
    assert net(torch.randn(2, 1, 27, 13), torch.zeros(2)).shape == (2, 2, 27, 13)
    # A scalar c_noise is broadcast over the batch; float64 models work too.
    x = torch.randn(2, 1, 12, 12, dtype=torch.float64)
    assert net.double()(x, torch.tensor(0.3, dtype=torch.float64)).dtype == torch.float64


def test_resampling_is_a_box_filter_and_handles_odd_sizes():
    down, up = Resample('down'), Resample('up')
    x = torch.randn(2, 3, 8, 6)
    torch.testing.assert_close(down(x), torch.nn.functional.avg_pool2d(x, 2))
    torch.testing.assert_close(up(x), x.repeat_interleave(2, -2).repeat_interleave(2, -1))
    # Odd: the last output row/column is the mean of the valid pixels only.
    odd = torch.randn(1, 1, 7, 5)
    torch.testing.assert_close(down(odd), torch.nn.functional.avg_pool2d(odd, 2, ceil_mode=True))
    assert up(down(odd), size=odd.shape[-2:]).shape == odd.shape
    # NCSN++'s (1, 3, 3, 1) filter: same sizes, and constants stay constant away from the border.
    down4, up4 = Resample('down', (1, 3, 3, 1)), Resample('up', (1, 3, 3, 1))
    assert down4(odd).shape == (1, 1, 4, 3) and up4(x).shape == (2, 3, 16, 12)
    torch.testing.assert_close(down4(torch.ones(1, 1, 8, 8))[..., 1:-1, 1:-1], torch.ones(1, 1, 2, 2))


def test_attention_placement():
    def attention_blocks(net):
        return [name for name, m in net.named_modules() if name.endswith('.attn') and m is not None]

    with torch.device('meta'):
        cifar = build_unet('ddpmpp-cifar10')
        # DDPM++: after each of the 4 encoder blocks at 16 px, the last decoder block at 16 px,
        # and the first bottleneck block.
        assert len(attention_blocks(cifar)) == 6
        # (14, 16) matches the middle level of 28 px and of 32 px images alike.
        for size in (28, 32):
            assert len(attention_blocks(build_unet('ddpmpp-mnist-small', img_resolution=size, in_channels=1))) == 4
        with pytest.warns(UserWarning, match='no attention'):
            assert len(attention_blocks(build_unet('ddpmpp-cifar10', img_resolution=28))) == 1
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # a list with one matching entry does not warn
        for size in (28, 32):
            assert len(attention_blocks(tiny(img_resolution=size))) == 3


def test_parameter_counts():
    with torch.device('meta'):  # no memory, no init cost
        cifar = build_unet('ddpmpp-cifar10', in_channels=3, img_resolution=32)
        cond = build_unet('ddpmpp-cifar10', in_channels=3, img_resolution=32, label_dim=10)
        mnist = {size: build_unet('ddpmpp-mnist-small', in_channels=1, img_resolution=size) for size in (28, 32)}
        fast = build_unet('ddpmpp-mnist-fast', in_channels=1, img_resolution=28, label_dim=10)
    n = num_params(cifar)
    assert n == 55_732_739  # a regression guard on the exact layer list
    assert abs(n / EDM_DDPMPP_CIFAR10_PARAMS - 1) < 0.01
    assert num_params(cond) - n == 10 * 128 + 128  # the label map (10 classes → 128 noise channels)
    for net in mnist.values():
        assert 1e6 <= num_params(net) <= 5e6
    assert num_params(fast) == 308_721  # configs/mnist/fast.yaml, as train.py prints it
    assert CONFIGS['ddpmpp-cifar10']['dropout'] == 0.13


def test_noise_conditioning_changes_the_output():
    net = perturb_output(tiny()).eval()
    x = torch.randn(2, 1, 28, 28)
    # EDM's c_noise = log(σ)/4 for σ = 0.002 and 80, and VP's (M − 1)·t range.
    outputs = [net(x, torch.full((2,), c)) for c in (-1.55, 1.1, 0.0, 500.0)]
    for i in range(len(outputs)):
        assert outputs[i].isfinite().all()
        for j in range(i):
            assert (outputs[i] - outputs[j]).abs().mean() > 1e-3 * outputs[i].abs().mean()
    # The output depends smoothly on c_noise through the embedding MLP: a non-zero gradient.
    c_noise = torch.tensor([0.3, -0.7], requires_grad=True)
    net(x, c_noise).square().sum().backward()
    assert c_noise.grad.abs().min() > 0
    assert net.map_layer0.weight.grad.abs().sum() > 0 and net.map_layer1.weight.grad.abs().sum() > 0


def test_class_conditioning_and_label_dropout():
    net = perturb_output(tiny(label_dim=10, label_dropout=1.0)).eval()
    x, c_noise = torch.randn(3, 1, 28, 28), torch.zeros(3)
    labels = torch.tensor([1, 4, 7])
    one_hot = torch.nn.functional.one_hot(labels, 10).float()
    zeros = torch.zeros(3, 10)
    y = net(x, c_noise, one_hot)
    assert (y - net(x, c_noise, one_hot.roll(1, dims=1))).abs().mean() > 1e-3 * y.abs().mean()
    torch.testing.assert_close(net(x, c_noise, labels), y)          # integer classes = one-hot
    torch.testing.assert_close(net(x, c_noise), net(x, c_noise, zeros))  # None = zeros
    # Eval mode never drops labels, even with label_dropout = 1.
    assert not torch.allclose(y, net(x, c_noise, zeros))
    # Train mode with label_dropout = 1 drops every label: the unconditional output (dropout is 0
    # in the tiny config, so train and eval mode agree otherwise).
    unconditional = net(x, c_noise, zeros)
    net.train()
    torch.testing.assert_close(net(x, c_noise, one_hot), unconditional)
    # With label_dropout = 0.5 some samples keep their label and some lose it.
    net.label_dropout = 0.5
    torch.manual_seed(3)
    kept = torch.stack([(net(x, c_noise, one_hot) - unconditional).flatten(1).abs().amax(1) > 1e-6
                        for _ in range(8)])
    assert kept.any() and not kept.all()
    with pytest.raises(ValueError, match='label_dim=0'):
        tiny()(x, c_noise, one_hot)


def test_a_few_steps_reduce_a_denoising_loss():
    net = tiny(img_resolution=16)
    denoiser = EDMPrecond(net, sigma_data=0.5)
    g = torch.Generator().manual_seed(0)
    # A fixed batch of smooth images (so that there is something to learn) and fixed noise.
    grid = torch.linspace(-1, 1, 16)
    x0 = 0.5 * torch.sin(3 * grid[None, None, :, None] + torch.randn(8, 1, 1, 1, generator=g))
    x0 = x0 * torch.cos(2 * grid[None, None, None, :])
    sigma = torch.exp(torch.randn(8, generator=g) * 1.2 - 1.2)
    noisy = x0 + sigma[:, None, None, None] * torch.randn(x0.shape, generator=g)

    def loss():
        weight = denoiser.loss_weight(sigma)[:, None, None, None]
        return (weight * (denoiser(noisy, sigma) - x0).square()).mean()

    opt = torch.optim.Adam(net.parameters(), lr=5e-3)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        value = loss()
        value.backward()
        opt.step()
        losses.append(value.item())
    with torch.no_grad():
        final = loss().item()
    assert all(v == v for v in losses) and final < 0.7 * losses[0], losses + [final]


def test_backward_under_bf16_autocast():
    # 14 px: 14 → 7 → 4 and back (4 → 8 cropped to 7) also exercises the odd-size paths in bf16.
    net = perturb_output(tiny(img_resolution=14))
    x, c_noise = torch.randn(2, 1, 14, 14), torch.tensor([-0.5, 0.8])
    reference = net(x, c_noise).detach()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y = net(x, c_noise)
    assert y.shape == x.shape
    y.float().square().mean().backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and g.isfinite().all() for g in grads)
    assert net.enc[0].weight.grad.abs().sum() > 0 and net.map_layer0.weight.grad.abs().sum() > 0
    # bf16 has ~3 significant digits: the result agrees with fp32 to a few percent.
    assert (y.float() - reference).norm() < 0.05 * reference.norm()
