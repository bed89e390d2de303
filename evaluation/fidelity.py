"""Image quality through torch-fidelity: FID, KID, Inception Score and precision/recall between a
folder of generated PNGs and the training images, with the reference statistics cached after the
first run; and, for digits, the Fréchet distance in the features of a small classifier trained
once on the real digits and cached (no Inception weights needed, so MNIST runs are measurable offline).
"""

import contextlib
import hashlib
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
import torch_fidelity.utils
from torch_fidelity import calculate_metrics, register_feature_extractor
from torch_fidelity.datasets import ImagesPathDataset
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
from tqdm import tqdm

from checkpoint_file import weights_fingerprint
from datasets.images import to_data
from errors import FidelityError
from evaluation.digit_features import AUTOENCODER, DigitFeatures  # registers its feature extractor
from files import save_atomically

# torch-fidelity's Inception weights, under torch hub's cache once downloaded.
INCEPTION_FILE = 'weights-inception-2015-12-05-6726825d.pth'
INCEPTION_URL = 'https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/' + INCEPTION_FILE
CLASSIFIER = 'cedm-digit-classifier'
METRICS = ('fid', 'kid', 'isc', 'prc')


class ReferenceImages(torch.utils.data.Dataset):
    """The training images as torch-fidelity reads them: uint8 [3, H, W] (grey repeated to RGB); with
    `num`, a fixed random subset of that many (`index`), since dataset files may be sorted by class."""

    def __init__(self, data, num=None):
        self.index = torch.arange(len(data))
        if num is not None and num < len(data):
            self.index = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:num]
        self.images = data.images.cpu()[self.index]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i].expand(3, -1, -1)


def inception_weights(path=None):
    """The Inception weights file: `path`, else torch-fidelity's download in torch hub's cache."""
    if path is not None:
        if not Path(path).is_file():
            raise FidelityError(f'--fid-weights: {path}: file not found')
        return str(path)
    cached = Path(torch.hub.get_dir()) / 'checkpoints' / INCEPTION_FILE
    if not cached.is_file():
        raise FidelityError(f'Inception weights: none in torch-fidelity\'s cache ({cached}) and no --fid-weights PATH; '
                            f'fetch {INCEPTION_URL} to either place')
    return str(cached)


class DigitClassifier(nn.Module):
    """A small CNN for 1-channel digits in [−1, 1]; `features` is its 128-d penultimate layer."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Linear(256, 128), nn.ReLU())
        self.head = nn.Linear(128, num_classes)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.body(x))


def train_classifier(data, path, steps=800, batch_size=64, seed=0, quiet=False):
    """Train a `DigitClassifier` on the digits of `data` (an ImageData) with a tenth held out, save it
    atomically to `path` with its held-out accuracy, and return that accuracy. A progress bar on stderr
    counts the steps (none if `quiet`)."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(data), generator=generator)
    held_out, train = order[:len(data) // 10], order[len(data) // 10:]
    images, labels = to_data(data.images.cpu()), data.labels.cpu()
    torch.manual_seed(seed)
    model = DigitClassifier(data.num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in tqdm(range(steps), desc='fid: digit classifier', unit='step', dynamic_ncols=True, disable=quiet):
        index = train[torch.randint(len(train), (batch_size,), generator=generator)]
        x = images[index]
        shift = torch.randint(-2, 3, (2,), generator=generator).tolist()  # small translations: robustness
        loss = F.cross_entropy(model(torch.roll(x, shift, dims=(-2, -1))), labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(images[held_out]).argmax(1) == labels[held_out]).float().mean().item()
    save_atomically({'state_dict': model.state_dict(), 'accuracy': accuracy, 'resolution': data.shape[-1],
                     'dataset': data.name}, path)
    return accuracy


def classifier_file(data, cache_dir):
    """Where `cached_classifier` keeps the digit classifier of `data` in `cache_dir`."""
    return Path(cache_dir) / f'classifier-{data.name}-{data.shape[-1]}px.pt'


def classifier_fingerprint(path):
    """`weights_fingerprint` of the digit classifier (or autoencoder) saved at `path`: which features a
    distance was measured in."""
    return weights_fingerprint(torch.load(path, map_location='cpu', weights_only=True)['state_dict'])


def cached_classifier(data, cache_dir, quiet=False):
    """(path, held-out accuracy or None): the digit classifier of `data` cached in `cache_dir`, trained
    there first (accuracy returned, progress on stderr unless `quiet`) when missing."""
    path = classifier_file(data, cache_dir)
    return path, None if path.is_file() else train_classifier(data, path, quiet=quiet)


class ClassifierFeatures(DigitFeatures):
    """A trained `DigitClassifier`: 'features' [B, 128] and 'logits' [B, 10]."""

    @staticmethod
    def load(path):
        model = DigitClassifier()
        model.load_state_dict(torch.load(path, map_location='cpu', weights_only=True)['state_dict'])
        return model

    @staticmethod
    def get_provided_features_list():
        return 'features', 'logits'

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {'isc': 'logits'}.get(metric, 'features')

    def outputs(self, grey):
        features = self.model.features(grey)
        return {'features': features, 'logits': self.model.head(features)}


if CLASSIFIER not in FEATURE_EXTRACTORS_REGISTRY:
    register_feature_extractor(CLASSIFIER, ClassifierFeatures)


def available_cores():
    """The CPU cores this process may run on: what DataLoader holds its number of workers against."""
    return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1


@contextlib.contextmanager
def workers_within_cores():
    """torch-fidelity's DataLoaders with at most one worker per available core, for the duration: it asks
    for min(4, 2 × cores) workers, more than DataLoader accepts without a warning on fewer than 4 cores."""
    loader = torch_fidelity.utils.DataLoader

    def capped(*args, num_workers=0, **kwargs):
        return loader(*args, num_workers=min(num_workers, available_cores()), **kwargs)

    torch_fidelity.utils.DataLoader = capped
    try:
        yield
    finally:
        torch_fidelity.utils.DataLoader = loader


def _digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]


def image_metrics(images, data, metrics=('fid', 'kid'), features='inception', weights=None, cache_root=None,
                  num_reference=None, cuda=False, batch_size=64, verbose=False):
    """{metric: value} between the PNGs in folder `images` and the training images of `data` (an ImageData).

    features: 'inception' (torch-fidelity's InceptionV3; `weights` a local file or None for its cache),
    'classifier' (a `DigitClassifier`; `weights` its file) or 'autoencoder' (the encoder of a
    `evaluation.digit_features.DigitAutoencoder`; `weights` its file). The reference statistics are cached
    under `cache_root` (default: torch-fidelity's), keyed by the dataset, the number of reference
    images and the feature weights. FID and KID are computed in the usual way; with the classifier or
    the autoencoder they are Fréchet and kernel distances in its features, comparable only with each other.
    """
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise FidelityError(f"--metrics: unknown {', '.join(sorted(unknown))} (allowed: {', '.join(METRICS)})")
    # sample.py's per-seed images (000042.png ...), not the grid beside them.
    files = sorted(str(p) for p in Path(images).glob('[0-9]*.png'))
    num_generated = len(files)
    if num_generated < 2:
        raise FidelityError(f'{images}: needs at least 2 PNG images named by seed, e.g. 000000.png (found {num_generated})')
    if features in ('classifier', 'autoencoder'):
        if weights is None or not Path(weights).is_file():
            raise FidelityError(f'{features} features: no {features} file at {weights}')
        extractor = CLASSIFIER if features == 'classifier' else AUTOENCODER
    else:
        weights, extractor = inception_weights(weights), 'inception-v3-compat'
    reference = ReferenceImages(data, num_reference)
    kid_subset_size = min(1000, num_generated, len(reference))
    with workers_within_cores():
        return calculate_metrics(
            input1=ImagesPathDataset(files), input2=reference, cuda=cuda, batch_size=batch_size, verbose=verbose,
            fid='fid' in metrics, kid='kid' in metrics, isc='isc' in metrics, prc='prc' in metrics,
            kid_subset_size=kid_subset_size, kid_subsets=10, prc_neighborhood=min(3, kid_subset_size - 1),
            feature_extractor=extractor, feature_extractor_weights_path=weights, cache=True, cache_root=cache_root,
            input2_cache_name=f'cedm-{data.name}-{"x".join(map(str, data.shape))}-{len(reference)}-{extractor}-{_digest(weights)}')
