"""Linear-probe accuracy (evaluation/probe.py, metrics.py --probe): the probe on synthetic features whose
answer is known (separable: 1; independent of the labels: chance within a binomial interval; scales far
apart: standardised), the split disjoint, the features taken at the end of both UNets' encoders (the
input of the decoder, which does not run), and the command line on a tiny MNIST and a toy checkpoint."""

import json
import math

import pytest
import torch
from torch import nn

import metrics
from evaluation.probe import DEFAULT_SIGMA, encoder_features, encoder_output, linear_probe, probe_accuracy, probe_split
from networks.mp_unet import mp_unet
from networks.precond import EDMPrecond
from networks.unet import build_unet


def _binomial_bounds(p, n, z=4.5):
    half = z * math.sqrt(p * (1 - p) / n)
    return p - half, p + half


def _blobs(n, num_classes, dim, generator, separation=6.0):
    """Features [n, dim]: class k centred at `separation` along axis k, unit noise; labels [n]."""
    labels = torch.randint(num_classes, (n,), generator=generator)
    x = torch.randn(n, dim, generator=generator)
    x[torch.arange(n), labels] += separation
    return x, labels


def test_linearly_separable_features_give_accuracy_one():
    g = torch.Generator().manual_seed(0)
    xtr, ytr = _blobs(500, 10, 20, g)
    xte, yte = _blobs(1000, 10, 20, g)
    assert linear_probe(xtr, ytr, xte, yte, num_classes=10) >= 0.99


def test_features_independent_of_the_labels_give_chance():
    # 300 train rows in 100 dimensions: the probe fits its own labels well, so scoring on the train
    # rows (or on test rows that are train rows) would be far above chance.
    g = torch.Generator().manual_seed(1)
    xtr, ytr = torch.randn(300, 100, generator=g), torch.randint(10, (300,), generator=g)
    xte, yte = torch.randn(2000, 100, generator=g), torch.randint(10, (2000,), generator=g)
    low, high = _binomial_bounds(0.1, 2000)
    assert low < linear_probe(xtr, ytr, xte, yte, num_classes=10) < high


def test_features_are_standardised_before_the_fit():
    # The classes differ along one feature of scale 1e-4, beside 9 noise features of scale 1e3 on an
    # offset of 1e4: after standardisation the first is as loud as the rest; without it the weight
    # decay forbids the 1e4-sized weight it would need.
    g = torch.Generator().manual_seed(2)
    def features(n):
        labels = torch.randint(2, (n,), generator=g)
        x = 1e4 + 1e3 * torch.randn(n, 10, generator=g, dtype=torch.float64)
        x[:, 0] = 1e-4 * (2 * labels - 1 + 0.1 * torch.randn(n, generator=g, dtype=torch.float64))
        return x, labels
    (xtr, ytr), (xte, yte) = features(400), features(1000)
    assert linear_probe(xtr, ytr, xte, yte) >= 0.99
    # The same fit on raw features fails: what this test would catch.
    assert linear_probe(xtr, ytr, xte, yte, standardise=False) < 0.75


def test_split_is_disjoint_seeded_and_shuffled():
    train, test = probe_split(1000, 600, 300, seed=0)
    assert len(train) == 600 and len(test) == 300
    assert not set(train.tolist()) & set(test.tolist())
    again = probe_split(1000, 600, 300, seed=0)
    assert torch.equal(train, again[0]) and torch.equal(test, again[1])
    assert not torch.equal(test, probe_split(1000, 600, 300, seed=1)[1])
    assert test.max() - test.min() > 900  # spread over the data set, not the last (class-sorted) block
    with pytest.raises(ValueError, match='the dataset has 1000'):
        probe_split(1000, 800, 300)


# ---------------------------------------------------------------------------------------------
# probe_accuracy on a stand-in model whose "encoder" passes the image through: features = pixels.

class _PassThrough(nn.Module):
    """A raw network whose encoder is one identity module; its decoder counts its calls."""

    label_dim = 0

    def __init__(self):
        super().__init__()
        self.enc = nn.ModuleList([nn.Identity()])
        self.decoder_calls = 0

    def forward(self, x, c_noise, class_labels=None):
        h = self.enc[0](x)
        self.decoder_calls += 1
        return h


class _Data:
    scale = 1.0  # data.scale, as ImageData has it

    def __init__(self, images, labels, num_classes=10):
        self.name, self.images, self.labels, self.num_classes = 'stand-in', images, labels, num_classes


class _Model:
    def __init__(self, images, labels):
        self.denoiser = self.raw_denoiser = EDMPrecond(_PassThrough()).eval()
        self.dataset = _Data(images, labels)


def test_probe_accuracy_reads_the_labels_from_the_features():
    # Label k brightens channel k of 16: separable in the pooled pixels.
    g = torch.Generator().manual_seed(3)
    labels = torch.randint(10, (600,), generator=g)
    images = torch.randint(0, 100, (600, 16, 3, 3), generator=g, dtype=torch.uint8)
    images[torch.arange(600), labels] += 150
    model = _Model(images, labels)
    result = probe_accuracy(model, sigma=0.1, num_train=400, num_test=200)
    assert result['accuracy'] >= 0.99
    assert result['chance'] == 0.1 and result['feature_dim'] == 16 and result['feature_resolution'] == [3, 3]
    assert model.denoiser.model.decoder_calls == 0  # the hook stopped every pass at the encoder


def test_probe_accuracy_holds_the_test_images_out():
    # Random pixels, random labels: 64 features for 150 train images, enough to memorise them, so a
    # held-out set that shares images with the train set scores far above chance.
    g = torch.Generator().manual_seed(4)
    images = torch.randint(0, 256, (300, 64, 2, 2), generator=g, dtype=torch.uint8)
    labels = torch.randint(10, (300,), generator=g)
    result = probe_accuracy(_Model(images, labels), sigma=1e-3, num_train=150, num_test=150)
    assert 0 <= result['accuracy'] < _binomial_bounds(0.1, 150)[1]


# ---------------------------------------------------------------------------------------------
# The hook's module in the two UNets.

def _networks():
    return {'unet': build_unet('ddpmpp-tiny', in_channels=1, img_resolution=28),
            'mp-unet': mp_unet('mnist-small')}


@pytest.mark.parametrize('kind', ['unet', 'mp-unet'])
def test_features_are_the_pooled_input_of_the_decoder(kind):
    torch.manual_seed(0)
    net = _networks()[kind]
    denoiser = EDMPrecond(net).eval()
    x = torch.rand(6, 1, 28, 28) * 2 - 1
    sigma = 0.5
    bottleneck = net.dec[0] if kind == 'unet' else list(net.dec.values())[0]
    seen = {}
    def remember(name, tensor):  # returns None: the hooks change nothing
        seen[name] = tensor
    pre = bottleneck.register_forward_pre_hook(lambda m, args: remember('input', args[0]))
    post = bottleneck.register_forward_hook(lambda m, args, out: remember('output', out))
    features = encoder_features(denoiser, x, sigma, generator=torch.Generator().manual_seed(5))
    assert not seen  # the decoder did not run
    with torch.no_grad():
        noisy = x + sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
        denoiser(noisy, torch.full((6,), sigma))
    pre.remove(), post.remove()
    lowest = seen['input']
    assert lowest.shape[-2:] == (7, 7)  # 28 → 14 → 7: the encoder's lowest resolution
    assert features.shape == (6, lowest.shape[1])
    torch.testing.assert_close(features, lowest.mean(dim=(2, 3)))
    # What the test tells apart: the decoder's first block has the same shape and other values.
    assert not torch.allclose(features, seen['output'].mean(dim=(2, 3)), atol=1e-3)
    assert encoder_output(net) is (net.enc[-1] if kind == 'unet' else list(net.enc.values())[-1])


def test_features_depend_on_sigma_and_the_seed_only_through_the_noise():
    torch.manual_seed(0)
    denoiser = EDMPrecond(build_unet('ddpmpp-tiny', in_channels=1, img_resolution=28, label_dim=10)).eval()
    x = torch.rand(4, 1, 28, 28) * 2 - 1
    def f(seed=0, sigma=0.5, **kwargs):
        return encoder_features(denoiser, x, sigma, generator=torch.Generator().manual_seed(seed), **kwargs)
    assert torch.equal(f(), f())
    assert not torch.allclose(f(), f(seed=1)) and not torch.allclose(f(), f(sigma=1.0))
    # Class-conditional networks see all-zero (unconditional) labels, never the true ones.
    torch.testing.assert_close(f(), f(class_labels=torch.zeros(4, 10)))
    assert not torch.allclose(f(), f(class_labels=torch.eye(10)[:4]))


# ---------------------------------------------------------------------------------------------
# metrics.py --probe

def _one_line(capsys, argv):
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        metrics.main(argv)
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and '\n' not in err, err
    return err


def test_the_script_default_sigma_is_the_module_s():
    assert metrics.PROBE_SIGMA == DEFAULT_SIGMA


@pytest.mark.parametrize('argv, message', [
    (['--probe-sigma', '0.5'], '--probe-sigma: only with --probe'),
    (['--probe', '--probe-sigma', '-1'], '--probe-sigma: must be a finite number > 0'),
    (['--probe', '--probe-train', '1'], '--probe-train: must be >= 2'),
    (['--probe', '--probe-test', '0'], '--probe-test: must be >= 1'),
    (['--probe', '--sigma-plot', 'x.png'], '--sigma-plot: not with --probe'),
])
def test_probe_flag_errors_are_one_line(argv, message, capsys, tmp_path):
    assert message in _one_line(capsys, ['--ckpt', str(tmp_path / 'none.ckpt'), *argv])


@pytest.fixture
def mnist_ckpt(tiny_mnist_ckpt):
    return tiny_mnist_ckpt


@pytest.mark.slow
def test_metrics_probe_prints_one_line_and_writes_json(mnist_ckpt, tmp_path, capsys):
    out = tmp_path / 'probe.json'
    capsys.readouterr()
    metrics.main(['--ckpt', mnist_ckpt, '--probe', '--probe-train', '300', '--probe-test', '200', '--device', 'cpu',
                  '--json', str(out)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1, lines
    assert 'linear-probe accuracy' in lines[0] and '(chance 0.1000) at σ=0.5, 300 train / 200 held-out mnist-5k' in lines[0]
    result = json.loads(out.read_text())['probe']
    assert f"{result['accuracy']:.4f}" in lines[0] and 0 <= result['accuracy'] <= 1
    assert result | {'accuracy': None} == {'accuracy': None, 'sigma': 0.5, 'num_train': 300, 'num_test': 200,
                                           'num_classes': 10, 'chance': 0.1, 'feature_dim': 16,
                                           'feature_resolution': [8, 8], 'weights': 'EMA'}
    err = _one_line(capsys, ['--ckpt', mnist_ckpt, '--probe', '--probe-train', '4500', '--probe-test', '1000'])
    assert '--probe-train 4500 + --probe-test 1000: mnist-5k has 5000 images' in err
    assert 'metrics.py --probe gives its linear-probe accuracy' in _one_line(capsys, ['--ckpt', mnist_ckpt])


@pytest.mark.slow
def test_metrics_probe_on_a_toy_checkpoint_is_a_one_line_error(tmp_path, capsys):
    import train
    train.main(['trainer.max_steps=2', 'trainer.batch_size=8', 'trainer.progress_bar=false', 'sample.num=8',
                f'run_dir={tmp_path}'])
    ckpt = str(tmp_path / 'checkpoints' / 'last.ckpt')
    assert _one_line(capsys, ['--ckpt', ckpt, '--probe']).endswith(
        f'--probe: {ckpt}: a toy model of points; the probe needs an image model with labels')


@pytest.mark.slow
def test_training_logs_the_probe_accuracy_when_asked(tmp_path):
    import train
    from config import ConfigError, load_config
    train.main(['--config', 'configs/mnist/small.yaml', 'network.preset=ddpmpp-tiny', 'trainer.max_steps=2',
                'trainer.batch_size=4', 'trainer.progress_bar=false', 'trainer.plot_every=2', 'sample.num=4',
                'sample.steps=2', 'noise.spectrum_samples=256', 'trainer.probe=true', 'trainer.probe_train=40',
                'trainer.probe_test=20', f'run_dir={tmp_path}'])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    values = [e.value for e in EventAccumulator(str(tmp_path / 'tensorboard')).Reload().Scalars('eval/probe_accuracy')]
    assert len(values) == 1 and 0 <= values[0] <= 1
    with pytest.raises(ConfigError, match='trainer.probe: needs labelled image data'):
        load_config('configs/toy/default.yaml', ['trainer.probe=true'])


@pytest.mark.slow
def test_metrics_likelihood_of_an_image_model_in_bits_per_dim(mnist_ckpt, tmp_path, capsys):
    from entropy.likelihood import image_bits_per_dim
    from sampling_model import load_model
    out = tmp_path / 'nll.json'
    capsys.readouterr()
    metrics.main(['--ckpt', mnist_ckpt, '--likelihood', '3', '--device', 'cpu', '--json', str(out)])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert 'bits/dim (uniformly dequantised, I-MMSE; an upper bound) on 3 mnist-5k images (training images: no held-out split)' in line
    result = json.loads(out.read_text())['likelihood']
    # The same three images and noise, through the library function directly.
    images, _ = metrics.held_out_images(load_model(mnist_ckpt, device='cpu').config, 3, seed=0)
    direct = image_bits_per_dim(load_model(mnist_ckpt, device='cpu').sampling_denoiser(), images,
                                generator=torch.Generator().manual_seed(0))
    assert result['bits_per_dim'] == pytest.approx(direct.mean().item(), rel=1e-6)
    assert 1 < result['bits_per_dim'] < 30 and result['images'] == 3
