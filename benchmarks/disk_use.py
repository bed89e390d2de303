"""What each experiment config's run leaves on disk at most, under its checkpoint retention, against keeping
every periodic checkpoint (and float32 post-hoc EMA snapshots) as cedm did before `trainer.keep_last`.

    python -m benchmarks.disk_use [key=value ...]

One markdown row per configs/*/*.yaml (the EDM2 networks also with `ema.posthoc=true`), from
`training.callbacks.disk_use`: the parameters of the config's network (built on the meta device: no memory,
no data), times 4 bytes for each of the raw weights, the EMA, Adam's two moments and the post-hoc EMAs in a
checkpoint, times the files kept; snapshots at 2 bytes a parameter.
"""

import argparse
import dataclasses
from pathlib import Path

import torch

from datasets.images import NUM_CLASSES
from networks import build_denoiser
from training.callbacks import disk_use
from config import IMAGE_DATA, load_config

GB = 1e9
NUM_CLASSES_ON_DISK = {**NUM_CLASSES, 'mnist-5k': 10, 'tinyimagenet': 200}


def num_parameters(config):
    """Parameters of the config's network, for data of the config's shape (toy data: 2 dimensions)."""
    data = config.data
    shape = ((1 if data.name.startswith('mnist') else 3, data.resolution, data.resolution)
             if data.name in IMAGE_DATA else (2,))
    classes = NUM_CLASSES_ON_DISK[data.name] if config.network.class_conditional else 0
    with torch.device('meta'):
        return sum(p.numel() for p in build_denoiser(config.network, config.precond, shape, classes).parameters())


def row(name, config):
    params = num_parameters(config)
    checkpoint, files, snapshots = disk_use(config, params)
    t = config.trainer
    everything = dataclasses.replace(t, keep_last=None, keep_every=None)  # every periodic file, as before
    _, all_files, _ = disk_use(dataclasses.replace(config, trainer=everything), params)
    before = checkpoint * all_files + 2 * snapshots  # snapshots were float32
    return (f'| {name} | {params / 1e6:.1f} M | {t.max_steps:,} / {t.ckpt_every:,} | {checkpoint / GB:.3g} | '
            f'{files} | {snapshots / GB:.3g} | {(checkpoint * files + snapshots) / GB:.3g} | {before / GB:.3g} |')


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('overrides', nargs='*', help='dotted key=value overrides applied to every config')
    args = parser.parse_args()
    print('| config | parameters | steps / ckpt_every | checkpoint GB | files kept | snapshots GB | total GB '
          '| every file kept, fp32 snapshots (before) GB |')
    print('|---|---|---|---|---|---|---|---|')
    for path in sorted(Path('configs').glob('*/*.yaml')):
        config = load_config(path, ['data.root=.', *args.overrides])  # the root is only named, never read
        name = f'{path.parent.name}/{path.stem}'
        print(row(name, config))
        if config.network.name == 'mp-unet' and not config.ema.posthoc:
            print(row(f'{name} + ema.posthoc', load_config(path, ['data.root=.', 'ema.posthoc=true', *args.overrides])))


if __name__ == '__main__':
    main()
