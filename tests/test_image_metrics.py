"""The image metrics of #37: the pixel checks on synthetic images, and every metric of the MNIST sampling
benchmark on real digits degraded on purpose (the committed classifier and autoencoder): each moves the
way it should, and the classifier's FD alone barely sees noise."""

from pathlib import Path

import pytest
import torch

from evaluation.pixel_stats import PixelReference, radial_spectrum

NETWORKS = Path('benchmarks/results/image_sampling_v3')


def squares(n, generator, largest=4):
    """uint8 [n, 1, 16, 16]: a bright square of random half-side 2 .. `largest` in the middle, black around."""
    images = torch.zeros(n, 1, 16, 16, dtype=torch.uint8)
    for image, half in zip(images, torch.randint(2, largest + 1, (n,), generator=generator)):
        image[0, 8 - half:8 + half, 8 - half:8 + half] = 255
    return images


def test_background_rms_sees_noise_and_the_spectrum_sees_blur():
    generator = torch.Generator().manual_seed(0)
    reference = PixelReference(squares(200, generator))
    real = squares(200, generator, largest=3)  # blurred, still black where every reference square is
    noisy = (real.float() + 5 * torch.randn(real.shape, generator=generator)).round().clamp(0, 255).to(torch.uint8)
    blurred = torch.nn.functional.avg_pool2d(real.float(), 3, 1, 1).round().to(torch.uint8)
    assert reference.mask.sum() == 16 * 16 - 8 * 8  # black in every reference image: outside the largest square
    assert reference.background_rms(real) == 0
    assert reference.background_rms(noisy) == pytest.approx(5 / 2 ** 0.5, rel=0.1)  # negative half clamped to 0
    assert reference.background_rms(blurred) == 0
    alike = PixelReference(squares(200, generator, largest=3))  # squares drawn as `real` is
    assert alike.spectrum_distance(real) < 0.05
    assert alike.spectrum_distance(blurred) > 10 * alike.spectrum_distance(real)
    assert radial_spectrum(blurred)[-1] < radial_spectrum(real)[-1] < radial_spectrum(noisy)[-1]


def test_every_metric_moves_on_degraded_digits_and_the_classifier_fd_misses_noise():
    from benchmarks import image_metrics
    from benchmarks.image_sampling import Scorer
    from datasets import build_dataset
    from datasets.images import to_data
    from evaluation.digit_features import held_out_split
    from config import load_config

    data = build_dataset(load_config('configs/mnist/fast.yaml').data)
    scorer = Scorer(data, NETWORKS)  # the committed networks: nothing is trained
    held_out, _ = held_out_split(len(data))
    sets = image_metrics.degraded_sets(to_data(data.images[held_out]))
    score = {name: scorer.score(images) for name, images in sets.items()}
    real, noisy, blurred = score['real digits (held out)'], score['+ noise σ = 0.05'], score['blur σ = 1.0 px']
    assert noisy['fd'] < 1.3 * real['fd']  # the classifier's FD barely moves at σ = 0.05 ...
    assert noisy['ae_fd'] > 1.4 * real['ae_fd'] and noisy['ae_kid'] > 20 * real['ae_kid']  # ... the autoencoder's do
    assert noisy['background'] > 3 * real['background'] and blurred['background'] < 1.5 * real['background']
    assert blurred['spectrum'] > 10 * real['spectrum'] and blurred['fd'] > 10 * real['fd']
    for metric in ('fd', 'ae_fd', 'ae_kid', 'background'):  # more noise, further from real digits
        values = [score[f'+ noise σ = {sigma}'][metric] for sigma in image_metrics.NOISE_SIGMAS]
        assert real[metric] < values[0] < values[1] < values[2], metric


def test_fid_scores_pngs_in_the_autoencoder_features_and_prints_the_pixel_checks(tmp_path, capsys):
    import json

    import fid
    from datasets import build_dataset
    from config import load_config
    from evaluation.digit_features import held_out_split
    from evaluation.plots import save_image

    data = build_dataset(load_config('configs/mnist/fast.yaml').data)
    held_out, _ = held_out_split(len(data))
    real = data.images[held_out[:200]]
    noise = 0.1 * 127.5 * torch.randn(real.shape, generator=torch.Generator().manual_seed(0))
    noisy = (real.float() + noise).round().clamp(0, 255).to(torch.uint8)
    results = {}
    for name, images in (('real', real), ('noisy', noisy)):
        for i, image in enumerate(images):
            save_image(image, tmp_path / name / f'{i:06d}.png')
        fid.main(['--images', str(tmp_path / name), '--config', 'configs/mnist/fast.yaml', '--features', 'autoencoder',
                  '--autoencoder', str(NETWORKS / 'autoencoder-mnist-5k-28px.pt'), '--cache-dir', str(tmp_path / 'cache'),
                  '--json', str(tmp_path / f'{name}.json'), '--quiet'])
        results[name] = json.loads((tmp_path / f'{name}.json').read_text())
    out = capsys.readouterr().out
    assert 'digit autoencoder autoencoder-mnist-5k-28px.pt (weights ' in out and 'background_rms' in out
    for metric, factor in (('frechet_autoencoder_distance', 1.5), ('kernel_autoencoder_distance_mean', 10),
                           ('background_rms', 3)):  # 200 images: the FD's own floor is high
        assert results['noisy'][metric] > factor * results['real'][metric], metric
