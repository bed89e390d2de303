"""Draw samples from a trained checkpoint.

    python sample.py --ckpt RUN/checkpoints/last.ckpt [--num N | --seeds 0-999 [--batch B]] [--steps 18]
                     [--solver heun] [--schedule karras] [--seed S] [--no-ema] [--out DIR] [--trajectories]
                     [--class K|K1,K2,...|0-9|none] [--guidance W] [--quiet]

Points (toy data): writes DIR/samples.npz (array `x`, [N, 2], and with --seeds the array `seeds`)
and DIR/samples.png (the samples over ground-truth points); --trajectories adds DIR/trajectories.png.
Images: writes DIR/grid.png (the first 64) and, with --seeds, one DIR/<seed>.png per image (six
digits, e.g. 000042.png), written batch by batch. DIR defaults to RUN/samples. With --seeds each
sample comes from its own seed (EDM's seed ranges: reproducible one by one, whatever --batch).
A class-conditional model draws, by default, one class per sample from that sample's own stream after
its initial noise (with --seeds: from its seed, as NVlabs/edm's generate.py does, so an FID over
--seeds 0-49999 measures the conditional model). --class K draws class K, --class none the
unconditional model; --guidance W weighs classifier-free guidance (0: unconditional, 1: conditional,
default; larger: stronger). Several classes (`--class 0-9`) write DIR/grid.png with one row of --num
images per class, the same initial noise in every row.
Under torchrun (`torchrun --nproc_per_node 8 sample.py --seeds 0-49999 ...`) each process samples on its own
GPU, cuda:LOCAL_RANK (unless --device names one), and draws its share of the seeds, split as NVlabs/edm's
generate.py splits them: batches of at most --batch, as many as a multiple of the processes, every
N-th to each; a process left with none writes nothing. The images are those of one process, bit for
bit (checked on the CPU: tests/test_distributed_sampling.py; benchmarks/gpu_check.py checks a GPU).
A progress bar on stderr counts samples per second (rank 0 only under torchrun; none with --quiet).
--network and --outdir are NVlabs/edm's names of --ckpt and --out.
"""

import math
import os

from cli import (Parser, UsageError, add_metric_args, add_sampler_args, check_data, check_device, check_metric_args,
                 check_output_folder, check_sampler_args, compute, load_for_sampling, main_guard, output_path,
                 sample_kwargs)


@main_guard
def main(argv=None):
    parser = Parser(description='Draw samples from a trained cedm checkpoint.')
    add_sampler_args(parser)
    parser.add_argument('--out', '--outdir', dest='out',
                        help='output folder (default: RUN/samples next to the checkpoint folder; --outdir: NVlabs/edm\'s name)')
    parser.add_argument('--trajectories', action='store_true', help='also plot denoising trajectories')
    parser.add_argument('--seeds', help="one sample per seed: '0-999', '1,5,10-19' (instead of --num and --seed)")
    parser.add_argument('--batch', type=int, default=10000, help='with --seeds: most samples per batch, per process (default 10000)')
    parser.add_argument('--class', dest='class_label', help="class to draw (class-conditional models; default: one "
                        "class per sample, drawn from its seed, as NVlabs/edm's generate.py); 'none': unconditional; "
                        "several, e.g. '0-9': a grid with one row per class")
    parser.add_argument('--guidance', type=float, help='classifier-free guidance weight, with --class (default 1)')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')
    parser.add_argument('--fid', action='store_true', help='with --seeds on images: then compute the metrics (fid.py flags below)')
    metric_flags = add_metric_args(parser)
    args = parser.parse_args(argv)
    out = check_args(args, metric_flags)

    from sampling_model import RANDOM_CLASS

    rank, world = int(os.environ.get('RANK', 0)), int(os.environ.get('WORLD_SIZE', 1))
    seeds, classes = _seeds(args), _classes(args)
    model = load_for_sampling(args, check=lambda model: check_model(args, model, seeds, classes, world))
    args.class_label = classes[0] if classes else (RANDOM_CLASS if model.num_classes and args.class_label is None else None)
    args.guidance = 1.0 if args.guidance is None else args.guidance
    num = len(seeds) if seeds else args.num or model.config.sample.num
    if len(classes) > 1:
        return class_grid(args, model, classes, num, out)
    return draw(args, model, seeds, num, out, rank, world)


def check_args(args, metric_flags):
    """The checks that need neither torch nor the checkpoint, then the device's; returns the output folder."""
    check_sampler_args(args)
    if args.fid:
        check_metric_args(args)
    for action in metric_flags:
        if not args.fid and getattr(args, action.dest) != action.default:
            raise UsageError(f'{action.option_strings[0]}: a flag of --fid (give --fid too, or leave it out)')
    if args.seeds is not None and args.num is not None:
        raise UsageError('--num and --seeds: give one (--seeds draws one sample per seed)')
    if not args.batch > 0:
        raise UsageError(f'--batch: must be > 0 (got {args.batch})')
    if args.fid and args.seeds is None:
        raise UsageError('--fid: needs --seeds (the metrics read one PNG per seed)')
    if args.guidance is not None and not (args.guidance >= 0 and math.isfinite(args.guidance)):
        raise UsageError(f'--guidance: must be a number >= 0 (got {args.guidance}; 0: unconditional, 1: conditional)')
    out = output_path(args.out, args.ckpt, 'samples', check_output_folder)
    check_device(args.device)
    return out


def check_model(args, model, seeds, classes, world):
    """The checks that need the checkpoint, before any sampling."""
    try:
        for class_label in classes:
            model.check_class_label(class_label)
    except ValueError as e:
        raise UsageError(f'--class: {e}') from None
    if args.guidance is not None:
        if not model.config.network.class_conditional:
            raise UsageError('--guidance: this model is not class-conditional (network.class_conditional: false); '
                             'drop --guidance')
        if args.class_label == 'none':
            raise UsageError('--guidance: with --class none the samples are unconditional; drop one of them')
    if world > 1 and not (seeds and model.is_image_model):
        raise UsageError('torchrun: several processes share out the --seeds of an image model only')
    if len(classes) > 1 and (not model.is_image_model or seeds is not None):
        raise UsageError('--class with several classes: a grid of image samples, without --seeds')
    if args.fid:
        if not model.is_image_model:
            raise UsageError(f'--fid: {args.ckpt}: not an image model (its metrics are metrics.py\'s)')
        check_data(args, model.dataset)


def progress(args, model, total, rank=0):
    """A progress bar on stderr over `total` samples, in samples per second (silent with --quiet and on
    ranks other than 0), and the number of solver steps by which each batch advances it."""
    from tqdm import tqdm

    bar = tqdm(total=total, unit='img' if model.is_image_model else 'sample', desc='sample', dynamic_ncols=True,
               disable=args.quiet or rank != 0)
    return bar, args.steps or model.config.sample.steps  # every schedule has as many steps as asked for


def advance(bar, size, steps, i):
    """Move `bar` on by solver step `i` of `steps` through a batch of `size` samples (`size` over all steps)."""
    bar.update(size * (i + 1) // steps - size * i // steps)


def rank_batches(seeds, max_batch_size, rank, world):
    """Process `rank`'s batches of `seeds` out of `world` processes, as NVlabs/edm's generate.py splits them:
    the fewest batches of at most `max_batch_size` seeds, rounded up to a multiple of `world`, of sizes that
    differ by one at most; each process takes every world-th. With fewer seeds than processes some get
    none (and draw nothing). Each seed draws from its own stream, so its image is the same in any batch."""
    import numpy as np

    num_batches = ((len(seeds) - 1) // (max_batch_size * world) + 1) * world
    return [batch.tolist() for batch in np.array_split(np.array(seeds), num_batches)[rank::world] if len(batch)]


def draw(args, model, seeds, num, out, rank, world):
    """Sample `num` points or images (with --seeds, this rank's share of them) and write them to `out`."""
    import numpy as np
    import torch

    from evaluation import plots

    batches = rank_batches(seeds, args.batch, rank, world) if seeds else [None]
    xs, paths = [], []
    bar, steps = progress(args, model, sum(len(batch) for batch in batches) if seeds else num, rank)
    with bar:
        for batch in batches:
            size, path = len(batch) if batch else num, []

            def callback(step):
                advance(bar, size, steps, step['i'])
                if args.trajectories:
                    path.append(step['x'].cpu())

            x = model.sample(None if batch else num, seeds=batch, callback=callback, class_label=args.class_label,
                             guidance=args.guidance, **sample_kwargs(args))
            paths.append(path)
            if model.is_image_model:  # written as they come: 50,000 images need not fit in memory
                for seed, image in zip(batch or (), plots.to_uint8(x, model.config.data.scale)):
                    plots.save_image(image, out / f'{seed:06d}.png')
                x = x[:64 - sum(len(kept) for kept in xs)]
            xs.append(x.cpu())

    out.mkdir(parents=True, exist_ok=True)
    if model.is_image_model:
        if rank == 0:  # from its own images, which begin with the first seeds: all of them with one process
            plots.save_image(plots.image_grid(torch.cat(xs), scale=model.config.data.scale), out / 'grid.png')
        written = sum(len(batch) for batch in batches) if seeds else 0
        print(f'sample: wrote {out}/grid.png' if rank == 0 else 'sample:', end='')
        print(f' and {written} of {num} images {out}/NNNNNN.png' + (f' (process {rank} of {world})' if world > 1 else '')
              if seeds else '')
        if args.fid:
            if world > 1:  # every process's images are written before rank 0 reads them all
                torch.distributed.init_process_group('gloo')
                torch.distributed.barrier()
                torch.distributed.destroy_process_group()
            if rank == 0:
                compute(args, out, model.dataset, model.device)
        return
    x = torch.cat(xs)
    np.savez(out / 'samples.npz', x=x.numpy(), **({'seeds': np.array(seeds)} if seeds else {}))
    reference = model.dataset.sample(num, generator=torch.Generator(model.device).manual_seed(args.seed + 1))
    s = model.config.sample
    title = f'{model.config.name}: {args.solver or s.solver}, {args.schedule or s.schedule}, {args.steps or s.steps} steps'
    plots.save(plots.samples_figure(x, reference, title=title), out / 'samples.png')
    if args.trajectories:
        trajectories = torch.cat([torch.stack(path) for path in paths], dim=1)  # [steps, N, 2]
        plots.save(plots.trajectories_figure(trajectories, reference), out / 'trajectories.png')
    print(f'sample: wrote {num} samples to {out}/samples.npz and {out}/samples.png'
          + (' and trajectories.png' if args.trajectories else ''))


def class_grid(args, model, classes, num, out):
    """DIR/grid.png: a row of `num` images per class, every row from the same initial noise."""
    import torch

    from evaluation import plots

    rows = []
    bar, steps = progress(args, model, num * len(classes))
    with bar:
        for k in classes:
            x = model.sample(num, class_label=k, guidance=args.guidance,
                             callback=lambda step: advance(bar, num, steps, step['i']), **sample_kwargs(args))
            rows.append(x.cpu())
    plots.save_image(plots.image_grid(torch.cat(rows), nrow=num, scale=model.config.data.scale), out / 'grid.png')
    print(f'sample: wrote {out}/grid.png ({len(classes)} classes × {num})')


def _classes(args):
    """The --class list (empty without --class), parsed like --seeds."""
    import sampling

    if args.class_label in (None, 'none'):
        return []
    try:
        return sampling.parse_seeds(args.class_label, 'class', "0-9 (or 'none')")
    except ValueError as e:
        raise UsageError(f'--class: {e}') from None


def _seeds(args):
    """The --seeds list, or None."""
    import sampling

    if args.seeds is None:
        return None
    try:
        return sampling.parse_seeds(args.seeds)
    except ValueError as e:
        raise UsageError(f'--seeds: {e}') from None


if __name__ == '__main__':
    main()
