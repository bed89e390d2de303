"""A second feature space for digit metrics, independent of the digit classifier's: the encoder of a
small convolutional autoencoder trained once on the real digits (all but a held-out set) to reconstruct
them, and cached like the classifier (evaluation/fidelity.py). A classifier trained to tell digits apart
may ignore what does not change the class (background speckle, blur); an encoder that must keep enough
to redraw the whole image, background included, does not. Its features: the 64-d code (shape) beside
the spatial mean of the first layer's rectified responses (16 local-texture statistics), each block
scaled to unit mean variance over the training digits, so that neither drowns the other in a distance.
"""

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch_fidelity import register_feature_extractor
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
from tqdm import tqdm

from datasets.images import to_data
from files import save_atomically

AUTOENCODER = 'cedm-digit-autoencoder'
NUM_HELD_OUT = 1000  # digits the autoencoder never sees (the first of a seed-0 permutation of the data)
CODE_DIM, TEXTURE_DIM = 64, 16


def held_out_split(num):
    """(held-out, training) indices of `num` digits: a seed-0 random permutation, the first NUM_HELD_OUT
    held out (dataset files may be sorted by class)."""
    order = torch.randperm(num, generator=torch.Generator().manual_seed(0))
    return order[:NUM_HELD_OUT], order[NUM_HELD_OUT:]


class DigitAutoencoder(nn.Module):
    """Digits [B, 1, R, R] in [−1, 1] (R = `resolution`, a multiple of 4) to a code [B, 64] and back;
    `features` [B, 80] is the code beside the first layer's mean rectified responses, both scaled by
    `feature_scale` (set in training)."""

    def __init__(self, resolution=28):
        super().__init__()
        if resolution % 4:
            raise ValueError(f'autoencoder features: the resolution must be a multiple of 4 (got {resolution})')
        quarter = resolution // 4
        self.texture = nn.Sequential(nn.Conv2d(1, TEXTURE_DIM, 3, padding=1), nn.ReLU())  # R px
        self.encoder = nn.Sequential(
            nn.Conv2d(TEXTURE_DIM, 32, 4, stride=2, padding=1), nn.ReLU(),  # R/2 px
            nn.Conv2d(32, 32, 4, stride=2, padding=1), nn.ReLU(), nn.Flatten(),  # R/4 px
            nn.Linear(32 * quarter ** 2, CODE_DIM))
        self.decoder = nn.Sequential(
            nn.Linear(CODE_DIM, 32 * quarter ** 2), nn.ReLU(), nn.Unflatten(1, (32, quarter, quarter)),
            nn.ConvTranspose2d(32, 32, 4, stride=2, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(32, 1, 4, stride=2, padding=1))
        self.register_buffer('feature_scale', torch.ones(2))  # 1/rms of the code and texture blocks

    def forward(self, x):
        return self.decoder(self.encoder(self.texture(x)))

    def features(self, x):
        texture = self.texture(x)
        code, statistics = self.encoder(texture), texture.mean((-2, -1))
        return torch.cat([code * self.feature_scale[0], statistics * self.feature_scale[1]], 1)


def train_autoencoder(data, path, steps=1500, batch_size=64, seed=0, quiet=False):
    """Train a `DigitAutoencoder` (mean squared reconstruction error) on the digits of `data` outside
    `held_out_split`, save it atomically to `path` with its held-out reconstruction RMSE (in [−1, 1]
    pixel units), and return that RMSE. A progress bar on stderr counts the steps (none if `quiet`)."""
    if data.shape[0] != 1:
        raise ValueError(f'autoencoder features: grey digits only (got {data.shape[0]} channels)')
    held_out, train = held_out_split(len(data))
    images = to_data(data.images.cpu())
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = DigitAutoencoder(data.shape[-1])
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in tqdm(range(steps), desc='fid: digit autoencoder', unit='step', dynamic_ncols=True, disable=quiet):
        x = images[train[torch.randint(len(train), (batch_size,), generator=generator)]]
        loss = F.mse_loss(model(x), x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        rmse = F.mse_loss(model(images[held_out]), images[held_out]).sqrt().item()
        texture = model.texture(images[train])
        blocks = model.encoder(texture), texture.mean((-2, -1))
        model.feature_scale.copy_(torch.stack([block.var(0).mean().rsqrt() for block in blocks]))
    save_atomically({'state_dict': model.state_dict(), 'rmse': rmse, 'resolution': data.shape[-1],
                     'dataset': data.name}, path)
    return rmse


def autoencoder_file(data, cache_dir):
    """Where `cached_autoencoder` keeps the digit autoencoder of `data` in `cache_dir`."""
    return Path(cache_dir) / f'autoencoder-{data.name}-{data.shape[-1]}px.pt'


def cached_autoencoder(data, cache_dir, quiet=False):
    """(path, held-out RMSE or None): the digit autoencoder of `data` cached in `cache_dir`, trained
    there first (RMSE returned) when missing."""
    path = autoencoder_file(data, cache_dir)
    return path, None if path.is_file() else train_autoencoder(data, path, quiet=quiet)


def load_autoencoder(path):
    """The `DigitAutoencoder` saved at `path` by `train_autoencoder`, frozen, in eval mode."""
    state = torch.load(path, map_location='cpu', weights_only=True)
    model = DigitAutoencoder(state['resolution'])
    model.load_state_dict(state['state_dict'])
    return model.requires_grad_(False).eval()


class DigitFeatures(FeatureExtractorBase):
    """torch-fidelity's view of a digit network that a subclass loads from `feature_extractor_weights_path`
    (`load`): uint8 RGB images [B, 3, H, W] in, the network's `outputs` of their grey data values out,
    in the order torch-fidelity asks for them."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        self.model = self.load(feature_extractor_weights_path)
        self.requires_grad_(False)
        self.eval()

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 3, 28, 28, dtype=torch.uint8)

    def forward(self, x):
        out = self.outputs(to_data(x.float().mean(1, keepdim=True)))
        return tuple(out[name] for name in self.features_list)


class AutoencoderFeatures(DigitFeatures):
    """A trained `DigitAutoencoder`: 'features' [B, 80]."""

    load = staticmethod(load_autoencoder)

    @staticmethod
    def get_provided_features_list():
        return ('features',)

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return 'features'

    def outputs(self, grey):
        return {'features': self.model.features(grey)}


if AUTOENCODER not in FEATURE_EXTRACTORS_REGISTRY:
    register_feature_extractor(AUTOENCODER, AutoencoderFeatures)
