"""What each image metric sees (#37): real digits, degraded on purpose, scored by every metric of
`benchmarks.image_sampling.Scorer` (classifier and autoencoder FD and KID, background RMS, spectrum
distance) against the reference digits.

    python -m benchmarks.image_metrics [--out benchmarks/results/image_metrics] [--networks DIR]

The images: the 1000 held-out real digits (the floor), the same with Gaussian noise of σ = 0.02, 0.05,
0.1 added in [−1, 1] pixel units (clamped, rounded to 8 bits like any PNG), and the same blurred by a
Gaussian of σ = 0.5, 1 px (5 × 5 kernel). The networks (classifier, autoencoder) are those kept in
--networks (default: the MNIST sampling benchmark's, benchmarks/results/image_sampling_v3), so that the
numbers compare with its table. Writes OUT/results.md (each metric, and its ratio to the floor) and
OUT/examples.png (one row of 16 digits per image set, in the table's order).
"""

import argparse
from pathlib import Path

import torch
import torchvision.transforms.functional as TF

from benchmarks.image_sampling import METRICS, Scorer
from datasets import build_dataset
from datasets.images import to_data
from evaluation.digit_features import held_out_split
from evaluation.plots import image_grid, save_image
from config import load_config

NOISE_SIGMAS = (0.02, 0.05, 0.1)  # [−1, 1] pixel units
BLUR_SIGMAS = (0.5, 1.0)  # pixels
EXAMPLES = 16


def degraded_sets(real, seed=0):
    """{name: images [n, 1, H, W] in [−1, 1]}: `real`, then noisy and blurred copies of it."""
    generator = torch.Generator().manual_seed(seed)
    sets = {'real digits (held out)': real}
    for sigma in NOISE_SIGMAS:
        sets[f'+ noise σ = {sigma}'] = (real + sigma * torch.randn(real.shape, generator=generator)).clamp(-1, 1)
    for sigma in BLUR_SIGMAS:
        sets[f'blur σ = {sigma} px'] = TF.gaussian_blur(real, 5, sigma)
    return sets


def table(scores):
    """Markdown: one row per image set, each metric with its ratio to the first set's (the floor)."""
    floor = next(iter(scores.values()))
    lines = ['| images | ' + ' | '.join(METRICS.values()) + ' |', '| --- |' + ' --- |' * len(METRICS)]
    for name, score in scores.items():
        lines.append(f'| {name} | ' + ' | '.join(f'{score[m]:.3g} (×{score[m] / floor[m]:.2g})' for m in METRICS) + ' |')
    return '\n'.join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default='benchmarks/results/image_metrics')
    parser.add_argument('--networks', default='benchmarks/results/image_sampling_v3')
    parser.add_argument('--config', default='configs/mnist/fast.yaml', help="its data section gives the digits")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = build_dataset(load_config(args.config).data)
    scorer = Scorer(data, Path(args.networks))
    held_out, _ = held_out_split(len(data))
    sets = degraded_sets(to_data(data.images.cpu()[held_out]))
    scores = {name: scorer.score(images) for name, images in sets.items()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = '\n'.join([
        f'Every metric of `benchmarks/image_sampling.py` on purpose-made images: {len(held_out)} held-out real '
        f'{data.name} digits, with Gaussian noise added in [−1, 1] units or blurred; the networks of '
        f'{args.networks} (classifier {scorer.fingerprint}, autoencoder {scorer.autoencoder_fingerprint}). '
        'Cells: the metric (× its value on the real digits). Examples: [examples.png](examples.png), one row '
        'per line of the table. Command: `python -m benchmarks.image_metrics`.', '', table(scores)])
    (out / 'results.md').write_text(text + '\n')
    save_image(image_grid(torch.cat([images[:EXAMPLES] for images in sets.values()]), nrow=EXAMPLES),
               out / 'examples.png')
    print(text)


if __name__ == '__main__':
    main()
