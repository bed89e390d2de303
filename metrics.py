"""Sample-quality metrics of a checkpoint, next to the floor of its sampler.

    python metrics.py --ckpt RUN/checkpoints/last.ckpt [--num 5000] [--steps 18] [--solver heun]
                      [--schedule karras] [--seed 0] [--json FILE] [--sigma-plot FILE] [--likelihood N] [--quiet]
    python metrics.py --ckpt RUN/checkpoints/last.ckpt --probe [--probe-sigma 0.5] [--probe-train 4000]
                      [--probe-test 1000] [--seed 0] [--json FILE] [--quiet]

Rows: the trained model; the same sampler, schedule, steps and noise with the exact denoiser
(the discretisation floor any trained model is held to); and fresh ground truth against ground
truth (the metric's own sampling noise). Columns: sliced Wasserstein-2 (swd), MMD² with RBF
kernels (mmd) and, for Gaussian-mixture data, the mean exact NLL of the samples in nats (nll).

--likelihood N: the model's own negative log-likelihood of N held-out data points by the I-MMSE
identity (entropy/likelihood.py), in nats and bits/dim, next to the same estimate with the exact
denoiser and, for mixtures, the exact −log p of the same points.

On image models (whose sample metrics are fid.py's), --likelihood N gives bits/dim of N images by the
same identity, uniformly dequantised (entropy.likelihood.image_bits_per_dim: an upper bound on the
discrete NLL): from the test split for mnist, cifar10, cifar100 and tinyimagenet (data.root), from the
training images for mnist-5k, which has no other (said in the output).

--probe (image models only): linear-probe accuracy of the denoiser's
encoder (evaluation/probe.py): the pooled activations at the end of the UNet encoder for the training
images plus noise of σ = --probe-sigma fit a logistic regression on --probe-train images, scored on
--probe-test others (a split seeded by --seed), against chance (1/classes).

A progress bar on stderr follows each phase that takes a while: the sampling (solver steps), the
metrics of each set of samples, the likelihood and the σ plot (denoiser calls), the probe's features
(images); none with --quiet.
"""

import contextlib
import json
import math
from pathlib import Path

from cli import (Parser, UsageError, add_sampler_args, check_device, check_output_file, check_sampler_args,
                 load_for_sampling, main_guard, sample_kwargs)

# --probe's defaults (evaluation.probe.DEFAULT_SIGMA, here so that --help needs no torch).
PROBE_SIGMA, PROBE_TRAIN, PROBE_TEST = 0.5, 4000, 1000


def progress_bar(args, desc, unit, iterable=None, total=None):
    """A progress bar on stderr over one phase of the work (none with --quiet)."""
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=f'metrics: {desc}', unit=unit, dynamic_ncols=True, disable=args.quiet)


def counting(denoiser, bar):
    """`denoiser`, moving `bar` on by one at each call."""
    def counted(*inputs):
        bar.update()
        return denoiser(*inputs)
    return counted


@contextlib.contextmanager
def counting_images(module, bar):
    """For the duration, `bar` moves on by the batch of each forward call of `module`."""
    def count(_module, inputs):
        bar.update(len(inputs[0]))  # and return None: what a pre-hook returns replaces the inputs

    handle = module.register_forward_pre_hook(count)
    try:
        yield
    finally:
        handle.remove()


def sigma_curves(denoiser, dataset, sigma, num, generator):
    """Mean ‖D(x;σ) − x0‖² and mean score norm ‖(D − x)/σ²‖ at each σ of the 1-D tensor `sigma`."""
    import torch

    mse, score_norm = [], []
    with torch.no_grad():
        for s in sigma.tolist():
            x0 = dataset.sample(num, generator=generator)
            x = x0 + s * torch.randn(x0.shape, generator=generator, device=x0.device)
            denoised = denoiser(x, torch.full((num,), s, device=x0.device))
            mse.append((denoised - x0).square().sum(1).mean().item())
            score_norm.append(((denoised - x) / s ** 2).norm(dim=1).mean().item())
    return mse, score_norm


def held_out_images(config, num, seed):
    """(uint8 images [num, C, H, W], what they are): the test split of data on disk, else the training images."""
    import torch

    from datasets.images import tiny_imagenet, torchvision_data
    data = config.data
    if data.name == 'tinyimagenet':
        images, source = tiny_imagenet(data.root, train=False, resolution=data.resolution).images, 'val split'
    elif data.name in ('mnist', 'cifar10', 'cifar100'):
        images, source = torchvision_data(data.name, data.root, train=False, resolution=data.resolution).images, 'test split'
    else:
        from datasets import build_dataset
        images, source = build_dataset(data).images, 'training images: no held-out split'
    if num > len(images):
        raise UsageError(f'--likelihood: {num} images; the {source} of {data.name} has {len(images)}')
    index = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:num]
    return images[index.to(images.device)], source


def image_likelihood(args, model):
    """Mean bits/dim (dequantised I-MMSE bound) of --likelihood images, with its standard error over images."""
    import torch

    from entropy.likelihood import NLL_POINTS, image_bits_per_dim
    num, seed, no_ema = args.likelihood, args.seed, args.no_ema
    images, source = held_out_images(model.config, num, seed)
    batches = images.split(64)
    with progress_bar(args, 'likelihood', 'σ', total=len(batches) * NLL_POINTS) as bar:
        bpd = torch.cat([image_bits_per_dim(counting(model.sampling_denoiser(not no_ema), bar), batch.to(model.device),
                                            generator=torch.Generator(model.device).manual_seed(seed + i),
                                            scale=model.config.data.scale)
                         for i, batch in enumerate(batches)])
    mean, se = bpd.mean().item(), (bpd.std() / math.sqrt(len(bpd))).item() if len(bpd) > 1 else float('nan')
    print(f'{model.config.name}: {mean:.4f} ± {se:.4f} bits/dim (uniformly dequantised, I-MMSE; an upper bound) '
          f'on {num} {model.config.data.name} images ({source}), {"raw" if no_ema else "EMA"} weights')
    return {'bits_per_dim': mean, 'standard_error': se, 'images': num, 'source': source}


def likelihood(args, model, exact):
    """Mean NLL (nats, bits/dim) of --likelihood held-out points: model and exact denoiser by I-MMSE, and exact −log p."""
    import torch

    from entropy.likelihood import NLL_POINTS, bits_per_dim, nll

    num = args.likelihood
    x0 = model.dataset.sample(num, generator=torch.Generator(model.device).manual_seed(args.seed + 7))
    dim = model.dataset.dim
    with progress_bar(args, 'likelihood', 'σ', total=2 * NLL_POINTS) as bar:
        rows = {name: nll(counting(denoiser, bar), x0, generator=torch.Generator(model.device).manual_seed(0))
                for name, denoiser in (('model (I-MMSE)', model.sampling_denoiser(not args.no_ema)),
                                       ('exact denoiser (I-MMSE)', exact))}
    if model.dataset.mixture is not None:
        rows['exact -log p'] = -model.dataset.mixture.log_prob(x0.double())
    print(f'negative log-likelihood of {num} held-out points: nats/sample, bits/dim')
    result = {}
    for name, values in rows.items():
        mean = values.mean().item()
        result[name] = {'nats': mean, 'bits_per_dim': bits_per_dim(mean, dim)}
        print(f'{name:24s} {mean:10.4f} {result[name]["bits_per_dim"]:10.4f}')
    return result


@main_guard
def main(argv=None):
    parser = Parser(description='Sample-quality metrics of a cedm checkpoint against its exact-denoiser floor.')
    add_sampler_args(parser)
    parser.add_argument('--json', help='also write the table to this JSON file')
    parser.add_argument('--sigma-plot', help='write a PNG of denoising error and score norm against σ')
    parser.add_argument('--likelihood', type=int, metavar='N', help='I-MMSE NLL of N held-out data points')
    parser.add_argument('--probe', action='store_true',
                        help='image models: linear-probe accuracy of the encoder features instead of the sample metrics')
    parser.add_argument('--probe-sigma', type=float, metavar='SIGMA',
                        help=f'noise level of the probed inputs (default {PROBE_SIGMA}, σ_data)')
    parser.add_argument('--probe-train', type=int, metavar='N', help=f'images the probe fits (default {PROBE_TRAIN})')
    parser.add_argument('--probe-test', type=int, metavar='N', help=f'held-out images it is scored on (default {PROBE_TEST})')
    parser.add_argument('--quiet', action='store_true', help='no progress bars')
    args = parser.parse_args(argv)
    check_probe_args(args)
    check_sampler_args(args)
    if args.likelihood is not None and args.likelihood < 1:
        raise UsageError(f'--likelihood: must be >= 1 (got {args.likelihood})')
    for flag, path in (('--json', args.json), ('--sigma-plot', args.sigma_plot)):
        if path is not None:
            check_output_file(path, flag)
    check_device(args.device)

    import torch

    import sampling
    from evaluation import plots
    from evaluation.metrics import sample_metrics
    model = load_for_sampling(args, check=lambda model: check_model(args, model))
    if model.is_image_model:
        table = {}
        if args.probe:
            table['probe'] = probe(args, model)
        if args.likelihood:
            table['likelihood'] = image_likelihood(args, model)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(table, indent=2))
        return table
    num = args.num or 5000
    kwargs = sample_kwargs(args)

    generator = torch.Generator(model.device).manual_seed(args.seed + 1)
    reference = model.dataset.sample(num, generator=generator)
    exact = model.dataset.reference_denoiser(generator=generator)
    mixture = model.dataset.mixture
    noise = torch.randn(num, model.dataset.dim, generator=torch.Generator(model.device).manual_seed(args.seed),
                        device=model.device)
    sigmas = model.sigmas(args.steps, args.schedule, args.sigma_min, args.sigma_max, args.rho).to(model.device)
    solver = args.solver or model.config.sample.solver
    with progress_bar(args, 'sample', 'step', total=2 * (len(sigmas) - 1)) as bar:
        rows = {
            'model': model.sample(num, callback=lambda step: bar.update(), **kwargs),
            'exact denoiser': sampling.sample(exact, noise, sigmas, solver, callback=lambda step: bar.update(),
                                              generator=torch.Generator(model.device).manual_seed(args.seed)),
            'ground truth': model.dataset.sample(num, generator=generator),
        }
    table = {name: sample_metrics(x, reference, mixture=mixture, generator=torch.Generator().manual_seed(0))
             for name, x in progress_bar(args, 'swd, mmd, nll', 'set', rows.items())}
    print(f'{model.config.name}: {solver}, {args.schedule or model.config.sample.schedule}, '
          f'{len(sigmas) - 1} steps, {num} samples, {"raw" if args.no_ema else "EMA"} weights')
    columns = list(next(iter(table.values())))
    print(f"{'':16s}" + ''.join(f'{c:>12s}' for c in columns))
    for name, values in table.items():
        print(f'{name:16s}' + ''.join(f'{values[c]:12.4f}' for c in columns))
    if args.likelihood:
        table['likelihood'] = likelihood(args, model, exact)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(table, indent=2))
    if args.sigma_plot:
        Path(args.sigma_plot).parent.mkdir(parents=True, exist_ok=True)
        grid = torch.logspace(math.log10(0.002), math.log10(80), 40)
        with progress_bar(args, 'σ plot', 'σ', total=2 * len(grid)) as bar:
            curves = {name: sigma_curves(counting(d, bar), model.dataset, grid, 2000, torch.Generator(model.device).manual_seed(2))
                      for name, d in (('model (EMA)', model.sampling_denoiser(not args.no_ema)), ('exact', exact))}
        plots.save(plots.sigma_curves_figure(grid.numpy(), curves), args.sigma_plot)


def check_probe_args(args):
    """The --probe flags' checks, before torch; fills in their defaults."""
    given = [flag for flag, value in (('--probe-sigma', args.probe_sigma), ('--probe-train', args.probe_train),
                                      ('--probe-test', args.probe_test)) if value is not None]
    if given and not args.probe:
        raise UsageError(f'{given[0]}: only with --probe')
    if args.probe_sigma is not None and not 0 < args.probe_sigma < math.inf:
        raise UsageError(f'--probe-sigma: must be a finite number > 0 (got {args.probe_sigma})')
    for flag, value, least in (('--probe-train', args.probe_train, 2), ('--probe-test', args.probe_test, 1)):
        if value is not None and value < least:
            raise UsageError(f'{flag}: must be >= {least} (got {value})')
    if args.probe and args.sigma_plot:
        raise UsageError('--sigma-plot: not with --probe (toy models only)')
    args.probe_sigma = PROBE_SIGMA if args.probe_sigma is None else args.probe_sigma
    args.probe_train = PROBE_TRAIN if args.probe_train is None else args.probe_train
    args.probe_test = PROBE_TEST if args.probe_test is None else args.probe_test


def check_model(args, model):
    if args.probe and not model.is_image_model:
        raise UsageError(f'--probe: {args.ckpt}: a toy model of points; the probe needs an image model with labels')
    if model.is_image_model and not (args.probe or args.likelihood):
        raise UsageError(f'--ckpt: {args.ckpt}: an image model; its metrics are fid.py\'s (FID, KID, classifier distance); '
                         'metrics.py --probe gives its linear-probe accuracy, --likelihood N its bits/dim')
    if model.is_image_model and args.sigma_plot:
        raise UsageError('--sigma-plot: toy models only')


def probe(args, model):
    """Print (and with --json write) the linear-probe accuracy of an image model's encoder."""
    from evaluation.probe import probe_accuracy

    data = model.dataset
    if args.probe_train + args.probe_test > len(data.images):
        raise UsageError(f'--probe-train {args.probe_train} + --probe-test {args.probe_test}: {data.name} has '
                         f'{len(data.images)} images')
    network = model.raw_denoiser if args.no_ema else model.denoiser
    with (progress_bar(args, 'probe features', 'img', total=args.probe_train + args.probe_test) as bar,
          counting_images(network, bar)):
        result = probe_accuracy(model, sigma=args.probe_sigma, num_train=args.probe_train, num_test=args.probe_test,
                                seed=args.seed, use_ema=not args.no_ema)
    weights = 'raw' if args.no_ema else 'post-hoc EMA' if args.posthoc_sigma_rel else 'EMA'
    h, w = result['feature_resolution']
    print(f"{model.config.name}: linear-probe accuracy {result['accuracy']:.4f} (chance {result['chance']:.4f}) "
          f"at σ={result['sigma']:g}, {result['num_train']} train / {result['num_test']} held-out {data.name} images, "
          f"encoder features {result['feature_dim']} channels at {h}×{w} pooled, {weights} weights")
    return {**result, 'weights': weights}


if __name__ == '__main__':
    main()
