"""Pixel-level checks of generated digits against real ones, with no network to be blind:

- background RMS: the root mean square, in 8-bit levels (0–255), of the pixels at the positions that
  every reference digit leaves black (0); residual noise lifts it, as does any haze around the strokes.
  Held-out real mnist-5k digits: 1.3 (a stroke there now and then).
- spectrum distance: the RMS over radial frequency bins (1 to the Nyquist radius, in cycles per image)
  of log10 of the ratio of the mean power spectra, generated over real; noise raises the high bins,
  blur lowers them, both move it away from 0.

Images are [n, 1, H, W] uint8 (what PNGs hold); `folder_pixel_metrics` reads them from sample.py's PNGs.
"""

from pathlib import Path

import torch
from torchvision.io import ImageReadMode, read_image

from errors import FidelityError


class PixelReference:
    """The background mask and mean radial power spectrum of real digits `images` (uint8 [n, 1, H, W])."""

    def __init__(self, images):
        self.mask = (images[:, 0] == 0).all(0)  # [H, W]
        if not self.mask.any():
            raise FidelityError('pixel statistics: no position is black in every reference image (not digits?)')
        self.spectrum = radial_spectrum(images)

    def background_rms(self, images):
        """RMS (8-bit levels) of `images` at the background positions."""
        return images[:, 0][:, self.mask].double().square().mean().sqrt().item()

    def spectrum_distance(self, images):
        """RMS over radial bins of log10(power of `images` / power of the reference)."""
        return (radial_spectrum(images) / self.spectrum).log10().square().mean().sqrt().item()

    def score(self, images):
        return {'background': self.background_rms(images), 'spectrum': self.spectrum_distance(images)}


def radial_spectrum(images):
    """Mean power |FFT|² of `images` (uint8 [n, 1, H, W], as values in [0, 1]) averaged over rings of
    integer radius 1 .. min(H, W) // 2 in cycles per image: float64 [min(H, W) // 2]."""
    height, width = images.shape[-2:]
    power = torch.fft.fft2(images[:, 0].double() / 255).abs().square().mean(0)
    fy, fx = torch.meshgrid(torch.fft.fftfreq(height) * height, torch.fft.fftfreq(width) * width, indexing='ij')
    radius = (fy.square() + fx.square()).sqrt().round().long()
    bins = torch.arange(1, min(height, width) // 2 + 1)
    return torch.stack([power[radius == r].mean() for r in bins])


def folder_pixel_metrics(folder, data):
    """{'background_rms': ..., 'spectrum_distance': ...} of the per-seed PNGs in `folder` (000042.png ...,
    read as grey) against all the training images of `data` (grey digits: an ImageData of 1 channel)."""
    files = sorted(Path(folder).glob('[0-9]*.png'))
    images = torch.stack([read_image(str(f), ImageReadMode.GRAY) for f in files])
    scores = PixelReference(data.images.cpu()).score(images)
    return {'background_rms': scores['background'], 'spectrum_distance': scores['spectrum']}
