"""Draw samples from a trained checkpoint.

    python sample.py --ckpt RUN/checkpoints/last.ckpt [--num N] [--steps 18] [--solver heun]
                     [--schedule karras] [--seed S] [--no-ema] [--out DIR] [--trajectories]

Writes DIR/samples.npz (array `x`, [N, 2]) and DIR/samples.png (the samples over ground-truth
points); --trajectories adds DIR/trajectories.png. DIR defaults to RUN/samples.
"""

from pathlib import Path

import numpy as np
import torch

from training import plots
from training.cli import Parser, add_sampler_args, check_sampler_args, load_for_sampling, main_guard, sample_kwargs


@main_guard
def main(argv=None):
    parser = Parser(description='Draw samples from a trained cedm checkpoint.')
    add_sampler_args(parser)
    parser.add_argument('--out', help='output folder (default: RUN/samples next to the checkpoint folder)')
    parser.add_argument('--trajectories', action='store_true', help='also plot denoising trajectories')
    args = parser.parse_args(argv)
    check_sampler_args(args)

    model = load_for_sampling(args)
    out = Path(args.out) if args.out else Path(args.ckpt).resolve().parent.parent / 'samples'
    num = args.num or model.config.sample.num
    path = []
    callback = (lambda step: path.append(step['x'].cpu())) if args.trajectories else None
    x = model.sample(num, callback=callback, **sample_kwargs(args))

    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / 'samples.npz', x=x.cpu().numpy())
    reference = model.dataset.sample(num, generator=torch.Generator(model.device).manual_seed(args.seed + 1))
    s = model.config.sample
    title = f'{model.config.name}: {args.solver or s.solver}, {args.schedule or s.schedule}, {args.steps or s.steps} steps'
    plots.save(plots.samples_figure(x, reference, title=title), out / 'samples.png')
    if args.trajectories:
        plots.save(plots.trajectories_figure(torch.stack(path), reference), out / 'trajectories.png')
    print(f'sample: wrote {num} samples to {out}/samples.npz and {out}/samples.png'
          + (' and trajectories.png' if args.trajectories else ''))


if __name__ == '__main__':
    main()
