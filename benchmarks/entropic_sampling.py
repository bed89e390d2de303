"""Sampling schedules compared at few steps: karras ρ=7 and log-linear against the profile's schedules.

    python -m benchmarks.entropic_sampling [--datasets ring tree moons swissroll] [--ckpt RUN/checkpoints/last.ckpt ...]
        [--nfe 4 8 16 32 64] [--num 4000] [--draws 5] [--out DIR]

For each toy mixture, with its EXACT denoiser (the discretisation error alone), and for each given
checkpoint (a trained model), the entropy profile is estimated offline with that same denoiser
(`EntropyProfile.from_denoiser`, as in arXiv 2504.13612) and each schedule is run with euler,
heun and dpmpp_2m at about the requested NFE (heun: steps = (NFE + 1) // 2, so NFE = 2·steps − 1),
from `--draws` independent noise draws of `--num` samples (the same draws for every schedule: paired).
Scores, mean ± standard error over the draws (ddof = 1): reverse KL(q‖p) with a k-NN entropy
(`evaluation.divergence`, nats; it sees dropped modes and over-sharp samples alike), the sliced
Wasserstein distance to fresh samples of the mixture, and, for the exact denoiser, the RMS distance
of each endpoint to a 512-step Heun solution from the same noise (the discretisation error itself).
A schedule is reported better than karras at a point only where the 95% t-intervals of the paired
differences of both reverse KL and SWD lie below zero. Writes DIR/results.md and DIR/nfe.png; each
model's rows are cached in DIR/rows/ as soon as they are measured, so a killed run resumes from the
models it finished (a cache measured with other --nfe, --num or --draws is measured again).
"""

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import torch

import sampling
from benchmarks.seed_statistics import paired_difference
from datasets import build_dataset
from entropy.profile import EntropyProfile
from entropy.surrogate import surrogate_sigmas
from evaluation.divergence import reverse_kl
from evaluation.metrics import sliced_wasserstein
from files import write_atomically
from sampling_model import load_model
from config import DataConfig

SCHEDULES = ('karras', 'loglinear', 'entropic', 'rescaled-entropic', 'structure', 'rescaled-structure', 'surrogate')
PROFILE_KINDS = {'entropic': 'entropic', 'rescaled-entropic': 'rescaled', 'structure': 'structure',
                 'rescaled-structure': 'rescaled-structure'}
SOLVERS = ('euler', 'heun', 'dpmpp_2m')
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
METRICS = ('kl', 'swd')


def schedule(name, profile, steps, solver):
    if name == 'surrogate':
        return surrogate_sigmas(profile, steps, solver, SIGMA_MIN, SIGMA_MAX)
    if name == 'karras':
        return sampling.karras_sigmas(steps, SIGMA_MIN, SIGMA_MAX, rho=7.0)
    if name == 'loglinear':
        return sampling.loglinear_sigmas(steps, SIGMA_MIN, SIGMA_MAX)
    return profile.sigmas(steps, kind=PROFILE_KINDS[name])


def evaluate(label, denoiser, mixture, nfes, num, draws, exact):
    """One row per (solver, NFE, schedule, draw): reverse KL, SWD and, for the exact denoiser, the
    endpoint RMSE. The schedules' profile is estimated offline with `denoiser` itself."""
    spectrum = torch.linalg.eigvalsh(mixture.covariance().double()).flip(0)
    profile = EntropyProfile.from_denoiser(denoiser, mixture.sample, SIGMA_MIN, SIGMA_MAX, num_points=128,
                                           samples_per_point=2048, generator=torch.Generator().manual_seed(1),
                                           spectrum=spectrum)
    steps = {(solver, nfe): (nfe + 1) // 2 if solver == 'heun' else nfe for solver in SOLVERS for nfe in nfes}
    sigmas = {(solver, nfe, name): schedule(name, profile, steps[solver, nfe], solver)  # once: the surrogate takes seconds
              for solver in SOLVERS for nfe in nfes for name in SCHEDULES}
    rows = []
    for draw in range(draws):
        noise = torch.randn(num, mixture.dim, generator=torch.Generator().manual_seed(1000 + draw))
        truth = mixture.sample(num, generator=torch.Generator().manual_seed(2000 + draw))
        reference = sampling.sample(denoiser, noise, sampling.karras_sigmas(512, SIGMA_MIN, SIGMA_MAX), 'heun') if exact else None
        for solver in SOLVERS:
            for nfe in nfes:
                for name in SCHEDULES:
                    x = sampling.sample(denoiser, noise, sigmas[solver, nfe, name], solver)
                    row = {'model': label, 'solver': solver, 'nfe': 2 * steps[solver, nfe] - 1 if solver == 'heun' else nfe,
                           'schedule': name, 'draw': draw, 'kl': reverse_kl(x, mixture.log_prob).kl,
                           'swd': sliced_wasserstein(x, truth, generator=torch.Generator().manual_seed(3000 + draw))}
                    if reference is not None:
                        row['rmse'] = (x - reference).square().sum(1).mean().sqrt().item()
                    rows.append(row)
    return rows


def cached_evaluate(out, label, denoiser, mixture, nfes, num, draws, exact):
    """`evaluate`'s rows, from DIR/rows/ when that model was measured with these settings."""
    settings = {'model': label, 'nfe': list(nfes), 'num': num, 'draws': draws, 'schedules': list(SCHEDULES)}
    path = Path(out) / 'rows' / (hashlib.sha256(label.encode()).hexdigest()[:16] + '.json')
    if path.exists():
        cached = json.loads(path.read_text())
        if cached['settings'] == settings:
            return cached['rows']
    rows = evaluate(label, denoiser, mixture, nfes, num, draws, exact)
    write_atomically(path, lambda tmp: tmp.write_text(json.dumps({'settings': settings, 'rows': rows})))
    return rows


def _values(rows, model, solver, nfe, name, metric):
    """The metric over the draws, in draw order."""
    mine = sorted((r['draw'], r[metric]) for r in rows
                  if (r['model'], r['solver'], r['nfe'], r['schedule']) == (model, solver, nfe, name))
    return np.array([value for _, value in mine])


def _mean_se(values):
    return values.mean(), values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else float('nan')


def beats_karras(rows, model, solver, nfe, name):
    """Whether `name` is better than karras by reverse KL and by SWD alike: the 95% t-interval of both
    paired differences (draw by draw) below zero."""
    return all(paired_difference(_values(rows, model, solver, nfe, name, metric),
                                 _values(rows, model, solver, nfe, 'karras', metric)).high < 0 for metric in METRICS)


def table(rows):
    lines = []
    for model in dict.fromkeys(r['model'] for r in rows):
        mine = [r for r in rows if r['model'] == model]
        metrics = METRICS + (('rmse',) if 'rmse' in mine[0] else ())
        draws = len({r['draw'] for r in mine})
        lines += [f'\n**{model}**: ' + ' / '.join({'kl': 'reverse KL (nats)', 'swd': 'SWD',
                                                     'rmse': 'endpoint RMSE to a 512-step solution'}[m] for m in metrics)
                  + f', mean ± standard error over {draws} noise draws; * better than karras by both KL and SWD', '',
                  '| solver | NFE | ' + ' | '.join(SCHEDULES) + ' |', '| --- | --- |' + ' --- |' * len(SCHEDULES)]
        for solver in SOLVERS:
            for nfe in sorted({r['nfe'] for r in mine if r['solver'] == solver}):
                cells = []
                for name in SCHEDULES:
                    parts = ['{:.3g} ± {:.1g}'.format(*_mean_se(_values(rows, model, solver, nfe, name, m))) for m in metrics]
                    star = ' *' if name != 'karras' and draws > 1 and beats_karras(rows, model, solver, nfe, name) else ''
                    cells.append(' / '.join(parts) + star)
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
                nfes = sorted({r['nfe'] for r in rows if (r['model'], r['solver']) == (model, solver)})
                kl = [max(_values(rows, model, solver, nfe, name, 'kl').mean(), 1e-3) for nfe in nfes]
                ax.plot(nfes, kl, 'o-', label=name, markersize=3)
            ax.set(xscale='log', yscale='log', title=f'{model}: {solver}', xlabel='NFE', ylabel='reverse KL (nats), mean over draws')
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
    parser.add_argument('--draws', type=int, default=5, help='independent noise draws per point (default 5)')
    parser.add_argument('--out', default='benchmarks/results/entropic_sampling')
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    rows = []
    for name in args.datasets:
        mixture = build_dataset(DataConfig(name=name)).mixture
        rows += cached_evaluate(out, f'{name}, exact denoiser', mixture, mixture, args.nfe, args.num, args.draws,
                                exact=True)
    for ckpt in args.ckpt:
        model = load_model(ckpt, device='cpu')
        rows += cached_evaluate(out, f'{model.config.data.name}, trained ({ckpt})', model.sampling_denoiser(),
                                model.dataset.mixture, args.nfe, args.num, args.draws, exact=False)
    out.mkdir(parents=True, exist_ok=True)
    text = table(rows)
    (out / 'results.md').write_text(text + '\n')
    plot(rows, out / 'nfe.png')
    print(text)


if __name__ == '__main__':
    main()
