"""CIFAR-100 (torchvision's pickles) and Tiny-ImageNet (its folder layout, or class folders) on small
generated files: pixels and labels read back exactly, one-line errors naming the missing piece, the
decoded-image cache, and a few training steps of each config."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

import datasets
import train
from datasets.images import DataError, tiny_imagenet, torchvision_data
from sampling_model import load_model
from config import load_config

TINY = ['trainer.max_steps=2', 'trainer.batch_size=4', 'trainer.log_every=1', 'trainer.plot_every=2',
        'trainer.ckpt_every=2', 'trainer.progress_bar=false', 'sample.num=4', 'sample.steps=2',
        'noise.spectrum_samples=256', 'noise.num_bins=8', 'network.preset=ddpmpp-tiny']
WNIDS = ['n09256479', 'n01443537', 'n04067472']  # wnids.txt order; class k is the k-th in sorted order


def write_cifar100(root, n_train=7, n_test=5, seed=0):
    """cifar-100-python/{train,test,meta} as torchvision reads them, with distinct fine (0..99) and
    coarse (0..19) labels."""
    rand = np.random.default_rng(seed)
    folder = root / 'cifar-100-python'
    folder.mkdir(parents=True)
    splits = {}
    for name, n in (('train', n_train), ('test', n_test)):
        fine = [99, 20, 57] + [int(v) for v in rand.integers(0, 100, n - 3)]
        splits[name] = {'filenames': [f'{name}_{i}.png' for i in range(n)], 'batch_label': name,
                        'fine_labels': fine, 'coarse_labels': [(f * 7 + 3) % 20 for f in fine],
                        'data': rand.integers(0, 256, (n, 3072), dtype=np.uint8)}
        (folder / name).write_bytes(pickle.dumps(splits[name]))
    (folder / 'meta').write_bytes(pickle.dumps({'fine_label_names': [f'f{i}' for i in range(100)],
                                                'coarse_label_names': [f'c{i}' for i in range(20)]}))
    return splits


def blocks(rand, side=64, block=16):
    """An RGB image of constant 16×16 blocks (what JPEG stores almost losslessly), [side, side, 3]."""
    cells = rand.integers(0, 256, (side // block, side // block, 3), dtype=np.uint8)
    return cells.repeat(block, 0).repeat(block, 1)


def write_tiny_imagenet(root, per_class=2, n_val=5, seed=0):
    """tiny-imagenet-200/ with the classes WNIDS (wnids.txt unsorted), `per_class` train JPEGs each
    (one of them grey), `n_val` val JPEGs annotated in shuffled order, and the parts a reader ignores
    (boxes files, test/). Returns {'train'|'val': [(path, source pixels, label)]} in reading order."""
    rand = np.random.default_rng(seed)
    base = root / 'tiny-imagenet-200'
    base.mkdir(parents=True)
    (base / 'wnids.txt').write_text('\n'.join(WNIDS) + '\n')
    order = sorted(WNIDS)
    expected = {'train': [], 'val': []}
    for wnid in order:
        folder = base / 'train' / wnid / 'images'
        folder.mkdir(parents=True)
        (base / 'train' / wnid / f'{wnid}_boxes.txt').write_text(f'{wnid}_0.JPEG\t0\t0\t63\t63\n')
        for i in range(per_class):
            pixels = blocks(rand)
            if wnid == order[1] and i == 1:  # Tiny-ImageNet holds some greyscale JPEGs
                pixels = pixels[..., :1].repeat(3, -1)
                Image.fromarray(pixels[..., 0], 'L').save(folder / f'{wnid}_{i}.JPEG', quality=100, subsampling=0)
            else:
                Image.fromarray(pixels).save(folder / f'{wnid}_{i}.JPEG', quality=100, subsampling=0)
            expected['train'].append((folder / f'{wnid}_{i}.JPEG', pixels, order.index(wnid)))
    (base / 'val' / 'images').mkdir(parents=True)
    lines = []
    for i in rand.permutation(n_val):
        pixels, wnid = blocks(rand), WNIDS[i % len(WNIDS)]
        path = base / 'val' / 'images' / f'val_{i}.JPEG'
        Image.fromarray(pixels).save(path, quality=100, subsampling=0)
        lines.append(f'val_{i}.JPEG\t{wnid}\t1\t2\t60\t61')
        expected['val'].append((path, pixels, order.index(wnid)))
    (base / 'val' / 'val_annotations.txt').write_text('\n'.join(lines) + '\n')
    (base / 'test' / 'images').mkdir(parents=True)
    Image.fromarray(blocks(rand)).save(base / 'test' / 'images' / 'test_0.JPEG')
    return expected


def write_class_folders(root, classes=('dog', 'cat'), per_class=2, side=32, seed=0):
    """ImageFolder's layout root/<class>/[sub/]*.png (lossless); [(source pixels, label)] in reading order."""
    rand = np.random.default_rng(seed)
    expected = []
    for k, name in enumerate(sorted(classes)):
        for i in range(per_class):
            path = root / name / ('nested' if i else '') / f'{i}.png'
            path.parent.mkdir(parents=True, exist_ok=True)
            pixels = rand.integers(0, 256, (side, side, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(path)
            expected.append((pixels, k))
    (root / 'notes.txt').write_text('not a class')  # files beside the class folders are ignored
    return expected


def chw(pixels):
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))


@pytest.fixture
def no_checksums(monkeypatch):
    import torchvision
    # The generated files cannot match torchvision's checksums of the real ones.
    monkeypatch.setattr(torchvision.datasets.cifar, 'check_integrity', lambda *args, **kwargs: True)


# ----------------------------------------------------------------------------------------------
# CIFAR-100

def test_cifar100_reads_both_splits_with_the_fine_labels(tmp_path, no_checksums):
    splits = write_cifar100(tmp_path)
    data = torchvision_data('cifar100', str(tmp_path), xflip=True)
    assert data.shape == (3, 32, 32) and len(data) == 7 and data.num_classes == 100 and data.xflip
    assert torch.equal(data.images, torch.from_numpy(splits['train']['data'].reshape(7, 3, 32, 32)))
    assert data.labels.tolist() == splits['train']['fine_labels']  # not the 20 coarse ones
    test = torchvision_data('cifar100', str(tmp_path), train=False)
    assert torch.equal(test.images, torch.from_numpy(splits['test']['data'].reshape(5, 3, 32, 32)))
    assert test.labels.tolist() == splits['test']['fine_labels']
    x, onehot = data.sample(16, generator=torch.Generator().manual_seed(0), labels=True)
    assert x.shape == (16, 3, 32, 32) and onehot.shape == (16, 100)


def test_cifar100_errors_name_the_missing_file_in_one_line(tmp_path, no_checksums):
    def error(*args, **kwargs):
        with pytest.raises(DataError) as info:
            torchvision_data('cifar100', *args, **kwargs)
        assert '\n' not in str(info.value)
        return str(info.value)

    assert 'nowhere: no such folder (expected cifar-100-python/train, test and meta under it)' in error(str(tmp_path / 'nowhere'))
    assert 'cifar100 not found or incomplete' in error(str(tmp_path)) and 'missing cifar-100-python/train and 2 more' in error(str(tmp_path))
    write_cifar100(tmp_path)
    (tmp_path / 'cifar-100-python' / 'meta').unlink()
    assert 'missing cifar-100-python/meta;' in error(str(tmp_path))
    (tmp_path / 'cifar-100-python' / 'meta').write_bytes(b'not a pickle')
    assert "files not in torchvision's format" in error(str(tmp_path)) and 'UnpicklingError' in error(str(tmp_path))
    (tmp_path / 'cifar-100-python' / 'meta').write_bytes(pickle.dumps({'fine_label_names': []}))
    (tmp_path / 'cifar-100-python' / 'train').write_bytes(pickle.dumps({'data': np.zeros((2, 3072), np.uint8)}))
    assert "KeyError: 'fine_labels'" in error(str(tmp_path))
    assert 'data.resolution: cifar100 has 32-px images (got 64)' in error(str(tmp_path), resolution=64)


# ----------------------------------------------------------------------------------------------
# Tiny-ImageNet

def check(data, expected):
    """Images and labels in reading order: what PIL decodes from each file, within JPEG's rounding of
    the source pixels, and its label."""
    assert len(data) == len(expected) and data.shape == (3, 64, 64) and data.images.dtype == torch.uint8
    for image, (path, source, _) in zip(data.images, expected):
        assert torch.equal(image, chw(np.asarray(Image.open(path).convert('RGB'))))
        assert (image.int() - chw(source).int()).abs().max() <= 3
    assert data.labels.tolist() == [label for *_, label in expected]


def test_tiny_imagenet_train_and_val_read_back_with_sorted_wnid_labels(tmp_path):
    expected = write_tiny_imagenet(tmp_path)
    train_data = tiny_imagenet(str(tmp_path), xflip=True)
    assert train_data.num_classes == 3 and train_data.xflip and train_data.name == 'tinyimagenet'
    check(train_data, expected['train'])
    assert train_data.labels.tolist() == [0, 0, 1, 1, 2, 2]
    val = tiny_imagenet(str(tmp_path), train=False)
    check(val, expected['val'])  # labels follow val_annotations.txt, whatever the order of the files
    # root may also be tiny-imagenet-200 itself
    assert torch.equal(tiny_imagenet(str(tmp_path / 'tiny-imagenet-200'), cache=False).images, train_data.images)


def test_tiny_imagenet_at_32_px_is_the_2x2_box_mean(tmp_path):
    write_tiny_imagenet(tmp_path)
    full, half = tiny_imagenet(str(tmp_path)), tiny_imagenet(str(tmp_path), resolution=32)
    assert half.shape == (3, 32, 32) and torch.equal(half.labels, full.labels)
    mean = full.images.double().reshape(-1, 3, 32, 2, 32, 2).mean((3, 5))
    assert (half.images.double() - mean).abs().max() <= 0.5
    with pytest.raises(DataError, match=r'data.resolution: 48 px is not 64-px images reduced by an integer factor'):
        tiny_imagenet(str(tmp_path), resolution=48)


def test_decoded_images_are_cached_and_rebuilt_when_a_file_changes(tmp_path, monkeypatch):
    import datasets.images as images
    expected = write_tiny_imagenet(tmp_path)
    first = tiny_imagenet(str(tmp_path))
    cache = tmp_path / 'tiny-imagenet-200' / '.cedm-cache-train.npz'
    assert cache.is_file() and not list(cache.parent.glob('.*.tmp*'))

    def no_decoding(*args):
        raise AssertionError('decoded again')
    monkeypatch.setattr(images, '_decode', no_decoding)
    again = tiny_imagenet(str(tmp_path))
    assert torch.equal(again.images, first.images) and torch.equal(again.labels, first.labels)
    monkeypatch.undo()
    path, _, _ = expected['train'][3]
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(path, quality=100, subsampling=0)
    changed = tiny_imagenet(str(tmp_path))
    assert changed.images[3].eq(200).all() and torch.equal(changed.images[:3], first.images[:3])
    # A folder where the cache cannot be written: a warning, the images all the same.
    def read_only(*args):
        raise PermissionError('read-only')
    monkeypatch.setattr(images, 'write_atomically', read_only)
    cache.unlink()
    with pytest.warns(UserWarning, match=r'\.cedm-cache-train\.npz: image cache not written \(read-only\)'):
        assert torch.equal(tiny_imagenet(str(tmp_path)).images, changed.images)


def test_class_folders_read_back_exactly(tmp_path):
    expected = write_class_folders(tmp_path, side=64)
    data = tiny_imagenet(str(tmp_path))
    assert data.num_classes == 2 and data.shape == (3, 64, 64)
    assert torch.equal(data.images, torch.stack([chw(pixels) for pixels, _ in expected]))
    assert data.labels.tolist() == [0, 0, 1, 1]  # cat, then dog
    assert tiny_imagenet(str(tmp_path), resolution=32).shape == (3, 32, 32)


def test_tiny_imagenet_errors_name_the_missing_piece_in_one_line(tmp_path):
    def error(root, **kwargs):
        with pytest.raises(DataError) as info:
            tiny_imagenet(str(root), **kwargs)
        assert '\n' not in str(info.value)
        return str(info.value)

    base = tmp_path / 'tiny-imagenet-200'
    assert 'nowhere: no such folder (expected tiny-imagenet-200/wnids.txt, train/<wnid>/images/*.JPEG' in error(tmp_path / 'nowhere')
    assert 'neither tiny-imagenet-200/ nor class folders in it' in error(tmp_path)
    assert 'data.download: tinyimagenet cannot be fetched' in error(tmp_path, download=True)
    (tmp_path / 'tiny-imagenet-200.zip').write_bytes(b'PK')
    assert 'unzip tiny-imagenet-200.zip there first' in error(tmp_path)
    write_tiny_imagenet(tmp_path)
    (base / 'wnids.txt').rename(base / 'classes.txt')
    assert 'tiny-imagenet-200/wnids.txt: missing' in error(tmp_path)
    (base / 'classes.txt').rename(base / 'wnids.txt')
    (base / 'train' / WNIDS[2] / 'images').rename(base / 'train' / WNIDS[2] / 'pictures')
    assert f'train/{WNIDS[2]}/images: no such folder' in error(tmp_path)
    annotations = base / 'val' / 'val_annotations.txt'
    lines = annotations.read_text().splitlines()
    annotations.write_text('\n'.join(lines[:2] + ['val_77.JPEG\tn01443537\t0\t0\t1\t1']))
    assert 'val/images/val_77.JPEG: missing (listed in val_annotations.txt line 3)' in error(tmp_path, train=False)
    annotations.write_text('\n'.join(lines[:1] + [lines[1].replace(lines[1].split()[1], 'n99999999')]))
    assert 'val_annotations.txt:2: expected "<file> <wnid> ..." with a wnid of wnids.txt' in error(tmp_path, train=False)
    annotations.unlink()
    assert 'val/val_annotations.txt: missing' in error(tmp_path, train=False)

    folders = tmp_path / 'folders'
    write_class_folders(folders, side=16)
    assert 'a folder of class folders has no validation split' in error(folders, train=False)
    Image.fromarray(np.zeros((16, 12, 3), np.uint8)).save(folders / 'dog' / 'wide.png')
    assert 'dog/wide.png: 12×16 px, expected 16×16 (all images square and of one size)' in error(folders, resolution=16)
    (folders / 'dog' / 'wide.png').write_bytes(b'not a png')
    assert 'dog/wide.png: not an image PIL can read' in error(folders, resolution=16)
    (folders / 'empty').mkdir()
    assert 'empty: class folder without .png/.jpg/.JPEG images' in error(folders, resolution=16)


# ----------------------------------------------------------------------------------------------
# Configs and a few training steps

@pytest.mark.slow
def test_cifar100_config_trains_a_few_steps_class_conditionally(tmp_path, no_checksums):
    write_cifar100(tmp_path / 'data', n_train=8)
    run = tmp_path / 'run'
    train.main(['--config', 'configs/cifar100/ddpmpp.yaml', *TINY, 'trainer.precision=32', f'data.root={tmp_path / "data"}',
                f'run_dir={run}'])
    model = load_model(run / 'checkpoints' / 'last.ckpt', device='cpu')
    assert model.shape == (3, 32, 32) and model.num_classes == 100
    x = model.sample(2, steps=2, class_label=99)
    assert x.shape == (2, 3, 32, 32) and torch.isfinite(x).all()


@pytest.mark.slow
def test_tinyimagenet_config_trains_a_few_steps_class_conditionally(tmp_path):
    write_tiny_imagenet(tmp_path / 'data')
    run = tmp_path / 'run'
    # 32 px: at 64 px the start-up covariance spectrum (12,288² in float64) alone takes minutes on a CPU.
    train.main(['--config', 'configs/tinyimagenet/ddpmpp.yaml', *TINY, 'trainer.precision=32', 'data.resolution=32',
                f'data.root={tmp_path / "data"}', f'run_dir={run}'])
    model = load_model(run / 'checkpoints' / 'last.ckpt', device='cpu')
    assert model.shape == (3, 32, 32) and model.num_classes == 3
    x = model.sample(2, steps=2, class_label=2)
    assert x.shape == (2, 3, 32, 32) and torch.isfinite(x).all()


@pytest.mark.slow
@pytest.mark.parametrize('config, classes, shape, parameters', [
    ('configs/cifar100/ddpmpp.yaml', 100, (3, 32, 32), 55_732_739 + 101 * 128),
    ('configs/tinyimagenet/ddpmpp.yaml', 3, (3, 64, 64), 55_732_739 + 4 * 128),
])
def test_paper_configs_build_the_ddpmpp_network_with_a_label_map(config, classes, shape, parameters, tmp_path,
                                                                  no_checksums):
    from networks import build_denoiser
    write_cifar100(tmp_path) if 'cifar100' in config else write_tiny_imagenet(tmp_path)
    loaded = load_config(config, [f'data.root={tmp_path}'])
    assert loaded.network.class_conditional and loaded.data.xflip
    data = datasets.build_dataset(loaded.data)
    assert data.shape == shape and data.num_classes == classes
    denoiser = build_denoiser(loaded.network, loaded.precond, data.shape, data.num_classes)
    assert sum(p.numel() for p in denoiser.parameters()) == parameters


@pytest.mark.parametrize('name', ['mnist', 'cifar10'])
def test_a_download_without_network_is_one_line_and_leaves_no_empty_folder(name, tmp_path, monkeypatch):
    import urllib.error
    import urllib.request

    def offline(*args, **kwargs):
        raise urllib.error.URLError('[Errno -2] Name or service not known')

    monkeypatch.setattr(urllib.request, 'urlopen', offline)  # offline, even where this machine has a network
    root = tmp_path / 'data' / name
    with pytest.raises(DataError) as error:
        torchvision_data(name, root, download=True)
    message = str(error.value)
    assert message.startswith(f'data.download: {name} could not be fetched into {root} ([Errno -2] Name or service')
    assert 'data.download=false' in message and '\n' not in message
    assert not (tmp_path / 'data').exists()  # the folders the download made are gone
    (tmp_path / 'kept').mkdir()  # a data.root that was there stays
    with pytest.raises(DataError):
        torchvision_data(name, tmp_path / 'kept', download=True)
    assert (tmp_path / 'kept').is_dir() and not any((tmp_path / 'kept').iterdir())
