"""Sampling schedules compared at few steps: karras ρ=7 against entropic and rescaled-entropic time.

    python -m benchmarks.entropic_sampling [--datasets ring tree moons swissroll] [--ckpt RUN/checkpoints/last.ckpt ...]
        [--nfe 4 8 16 32 64] [--num 4000] [--out DIR]

For each toy mixture, with its EXACT denoiser (the discretisation error alone), and for each given
checkpoint (a trained model), the entropy profile is estimated offline with that same denoiser
(`EntropyProfile.from_denoiser`, as in arXiv 2504.13612) and each schedule is run with euler,
heun and dpmpp_2m at about the requested NFE (heun: steps = (NFE + 1) // 2, so NFE = 2·steps − 1).
Quality: the exact-NLL gap of the samples (mean −log p minus the data entropy, nats; 0 for samples of the data itself)
and, for the exact denoiser, the RMS distance of each endpoint to a 512-step Heun solution from
the same noise. Writes DIR/results.md and DIR/nfe.png.
"""

import argparse
from pathlib import Path


import torch

import sampling
from training.config import DataConfig
from datasets import build_dataset
from entropy.profile import EntropyProfile
from evaluation.metrics import mixture_nll
from sampling_model import load_model

SCHEDULES = ('karras', 'entropic', 'rescaled-entropic')
SOLVERS = ('euler', 'heun', 'dpmpp_2m')
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0


def schedule(name, profile, steps):
    if name == 'karras':
        return sampling.karras_sigmas(steps, SIGMA_MIN, SIGMA_MAX, rho=7.0)
    return profile.sigmas(steps, kind='entropic' if name == 'entropic' else 'rescaled')


def evaluate(label, denoiser, mixture, nfes, num, exact):
    gen = torch.Generator().manual_seed(0)
    entropy = mixture.entropy(100000, generator=gen)
    profile = EntropyProfile.from_denoiser(denoiser, mixture.sample, SIGMA_MIN, SIGMA_MAX, num_points=128,
                                           samples_per_point=2048, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(num, mixture.dim, generator=torch.Generator().manual_seed(2))
    reference = sampling.sample(denoiser, noise, sampling.karras_sigmas(512, SIGMA_MIN, SIGMA_MAX), 'heun') if exact else None
    rows = []
    for solver in SOLVERS:
        for nfe in nfes:
            steps = (nfe + 1) // 2 if solver == 'heun' else nfe
            for name in SCHEDULES:
                x = sampling.sample(denoiser, noise, schedule(name, profile, steps), solver)
                row = {'model': label, 'solver': solver, 'nfe': 2 * steps - 1 if solver == 'heun' else steps,
                       'schedule': name, 'gap': mixture_nll(mixture, x) - entropy}
                if reference is not None:
                    row['rmse'] = (x - reference).square().sum(1).mean().sqrt().item()
                rows.append(row)
    return rows


def table(rows):
    lines = []
    models = list(dict.fromkeys(r['model'] for r in rows))
    for model in models:
        mine = [r for r in rows if r['model'] == model]
        has_rmse = 'rmse' in mine[0]
        lines += [f'\n**{model}**: exact-NLL gap in nats' + (' / endpoint RMSE to a 512-step solution' if has_rmse else ''), '',
                  '| solver | NFE | ' + ' | '.join(SCHEDULES) + ' |', '| --- | --- |' + ' --- |' * len(SCHEDULES)]
        for solver in SOLVERS:
            for nfe in sorted({r['nfe'] for r in mine if r['solver'] == solver}):
                cells = []
                for name in SCHEDULES:
                    (r,) = [r for r in mine if (r['solver'], r['nfe'], r['schedule']) == (solver, nfe, name)]
                    cells.append(f"{r['gap']:.3f}" + (f" / {r['rmse']:.4f}" if has_rmse else ''))
                lines.append(f'| {solver} | {nfe} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def plot(rows, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    models = list(dict.fromkeys(r['model'] for r in rows))
    fig, axes = plt.subplots(len(models), len(SOLVERS), figsize=(4.5 * len(SOLVERS), 3.5 * len(models)), squeeze=False)
    for i, model in enumerate(models):
        for j, solver in enumerate(SOLVERS):
            ax = axes[i, j]
            for name in SCHEDULES:
                pts = sorted((r['nfe'], max(r['gap'], 1e-3)) for r in rows
                             if (r['model'], r['solver'], r['schedule']) == (model, solver, name))
                ax.plot(*zip(*pts), 'o-', label=name, markersize=3)
            ax.set(xscale='log', yscale='log', title=f'{model}: {solver}', xlabel='NFE', ylabel='NLL gap (nats)')
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[1])
    parser.add_argument('--datasets', nargs='*', default=['ring', 'tree', 'moons', 'swissroll'])
    parser.add_argument('--ckpt', nargs='*', default=[], help='trained checkpoints (mixture datasets)')
    parser.add_argument('--nfe', nargs='+', type=int, default=[4, 8, 16, 32, 64])
    parser.add_argument('--num', type=int, default=4000)
    parser.add_argument('--out', default='benchmarks/results/entropic_sampling')
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name in args.datasets:
        mixture = build_dataset(DataConfig(name=name)).mixture
        rows += evaluate(f'{name}, exact denoiser', mixture, mixture, args.nfe, args.num, exact=True)
    for ckpt in args.ckpt:
        model = load_model(ckpt, device='cpu')
        rows += evaluate(f'{model.config.data.name}, trained ({ckpt})', model.sampling_denoiser(),
                         model.dataset.mixture, args.nfe, args.num, exact=False)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = table(rows)
    (out / 'results.md').write_text(text + '\n')
    plot(rows, out / 'nfe.png')
    print(text)


if __name__ == '__main__':
    main()
