"""Sample-quality metrics of a checkpoint, next to the floor of its sampler.

    python metrics.py --ckpt RUN/checkpoints/last.ckpt [--num 5000] [--steps 18] [--solver heun]
                      [--schedule karras] [--seed 0] [--json FILE] [--sigma-plot FILE] [--likelihood N]

Rows: the trained model; the same sampler, schedule, steps and noise with the exact denoiser
(the discretisation floor any trained model is held to); and fresh ground truth against ground
truth (the metric's own sampling noise). Columns: sliced Wasserstein-2 (swd), MMD² with RBF
kernels (mmd) and, for Gaussian-mixture data, the mean exact NLL of the samples in nats (nll).

--likelihood N: the model's own negative log-likelihood of N held-out data points by the I-MMSE
identity (entropy/likelihood.py), in nats and bits/dim, next to the same estimate with the exact
denoiser and, for mixtures, the exact −log p of the same points.
"""

import json
import math
from pathlib import Path

from cli import (Parser, UsageError, add_sampler_args, check_device, check_output_file, check_sampler_args,
                 load_for_sampling, main_guard, sample_kwargs)


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


def likelihood(model, exact, num, seed, no_ema):
    """Mean NLL (nats, bits/dim) of `num` held-out points: model and exact denoiser by I-MMSE, and exact −log p."""
    import torch

    from entropy.likelihood import bits_per_dim, nll

    x0 = model.dataset.sample(num, generator=torch.Generator(model.device).manual_seed(seed + 7))
    dim = model.dataset.dim
    rows = {'model (I-MMSE)': nll(model.sampling_denoiser(not no_ema), x0, generator=torch.Generator(model.device).manual_seed(0)),
            'exact denoiser (I-MMSE)': nll(exact, x0, generator=torch.Generator(model.device).manual_seed(0))}
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
    args = parser.parse_args(argv)
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
    rows = {
        'model': model.sample(num, **kwargs),
        'exact denoiser': sampling.sample(exact, noise, sigmas, solver,
                                          generator=torch.Generator(model.device).manual_seed(args.seed)),
        'ground truth': model.dataset.sample(num, generator=generator),
    }
    table = {name: sample_metrics(x, reference, mixture=mixture, generator=torch.Generator().manual_seed(0))
             for name, x in rows.items()}
    print(f'{model.config.name}: {solver}, {args.schedule or model.config.sample.schedule}, '
          f'{len(sigmas) - 1} steps, {num} samples, {"raw" if args.no_ema else "EMA"} weights')
    columns = list(next(iter(table.values())))
    print(f"{'':16s}" + ''.join(f'{c:>12s}' for c in columns))
    for name, values in table.items():
        print(f'{name:16s}' + ''.join(f'{values[c]:12.4f}' for c in columns))
    if args.likelihood:
        table['likelihood'] = likelihood(model, exact, args.likelihood, args.seed, args.no_ema)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(table, indent=2))
    if args.sigma_plot:
        Path(args.sigma_plot).parent.mkdir(parents=True, exist_ok=True)
        grid = torch.logspace(math.log10(0.002), math.log10(80), 40)
        curves = {name: sigma_curves(d, model.dataset, grid, 2000, torch.Generator(model.device).manual_seed(2))
                  for name, d in (('model (EMA)', model.sampling_denoiser(not args.no_ema)), ('exact', exact))}
        plots.save(plots.sigma_curves_figure(grid.numpy(), curves), args.sigma_plot)


def check_model(args, model):
    if model.is_image_model:
        raise UsageError(f'--ckpt: {args.ckpt}: an image model; its metrics are fid.py\'s (FID, KID, classifier distance)')


if __name__ == '__main__':
    main()
