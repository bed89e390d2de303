"""Training σ distributions compared on toy data: quality against steps, and the speed-up.

    python benchmarks/entropic_training.py [--datasets ring tree moons swissroll] [--seeds 0 1 2]
        [--steps 10000] [--evals 1000 2000 4000 6000 8000 10000] [--workers 2] [--out DIR] [--summarise-only]

Every run is `train.py`'s own Lightning loop (the same model, batch, optimizer, EMA) with one
σ distribution; runs differ only in `noise.*`. At each evaluation step the EMA model draws 4000
samples with the 18-step Heun sampler; quality is the exact-NLL gap (mean −log p of the samples
minus the data's entropy, nats; 0 is perfect) for mixtures, and the sliced Wasserstein distance.
Speed-up of a distribution = steps lognormal needs to first reach its final quality ÷ steps the
distribution needs for the same (mean over seeds, linear interpolation between evaluations;
'not reached' when it never gets there), and the same paired by seed (each seed's run against
lognormal's run with that seed). Variants: the fixed distributions, the entropic profile's
densities (entropic, gated, rescaled, importance-weighted), the structure density estimated
online ('structure') and from the exact denoiser of the data's mixture, fixed from step 0
('structure-oracle'). Each run's result is cached in DIR/runs/*.json, so an
interrupted sweep resumes; DIR/results.md and DIR/curves.png summarise.
"""

import argparse
import json
import os
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

VARIANTS = {
    'lognormal': [],
    'loguniform': ['noise.name=loguniform'],
    'logistic': ['noise.name=logistic'],
    'entropic': ['noise.name=entropic'],
    'entropic-importance': ['noise.name=entropic', 'noise.weighting=importance'],
    'entropic-gated': ['noise.name=entropic', 'noise.gate_c=0.1'],
    'rescaled': ['noise.name=entropic', 'noise.density=rescaled'],
    'structure': ['noise.name=entropic', 'noise.density=structure'],
    # The structure density of the data's exact profile (its mixture's own denoiser), fixed from step 0.
    'structure-oracle': ['noise.name=entropic', 'noise.density=structure', 'noise.warmup_steps=0',
                         'noise.refresh_every=1000000000'],
}


def run_one(dataset, variant, seed, steps, evals, out):
    """Train one configuration; returns {'step': [...], 'gap': [...], 'swd': [...], 'sigma_q': [...]}."""
    import lightning as L
    import torch

    torch.set_num_threads(1)
    import train
    from training.config import load_config
    from training.entropy import EntropyProfile
    from training.metrics import mixture_nll, sliced_wasserstein
    from training.module import EDMModule

    path = out / 'runs' / f'{dataset}-{variant}-{seed}.json'
    if path.is_file():
        return json.loads(path.read_text())

    class Evaluate(L.Callback):
        def __init__(self):
            self.result = {'step': [], 'gap': [], 'swd': [], 'sigma_q10_50_90': []}

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if trainer.global_step not in evals:
                return
            gen = torch.Generator().manual_seed(1234)
            x = module.sample(4000, steps=18, solver='heun', schedule='karras', seed=seed)
            mixture = module.dataset.mixture
            reference = mixture.sample(4000, generator=gen)
            entropy = -mixture.log_prob(mixture.sample(100000, generator=gen).double()).mean().item()
            module.sigma_generator, training_stream = gen, module.sigma_generator  # left untouched
            sigma = module.draw_sigma(20000)
            module.sigma_generator = training_stream
            self.result['step'].append(trainer.global_step)
            self.result['gap'].append(mixture_nll(mixture, x) - entropy)
            self.result['swd'].append(sliced_wasserstein(x, reference, generator=gen))
            self.result['sigma_q10_50_90'].append(torch.quantile(sigma, torch.tensor([0.1, 0.5, 0.9])).tolist())

    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(f'configs/toy/{"default" if dataset == "ring" else dataset}.yaml', VARIANTS[variant] + [
            f'seed={seed}', f'trainer.max_steps={steps}', f'run_dir={tmp}', 'trainer.progress_bar=false',
            f'trainer.plot_every={10 * steps}', f'trainer.ckpt_every={10 * steps}', 'trainer.log_every=500'])
        torch.manual_seed(seed)
        model = EDMModule(config)
        if variant.endswith('-oracle'):
            mixture, gen = model.dataset.mixture, torch.Generator().manual_seed(seed)
            model.profile.load_state_dict(EntropyProfile.from_denoiser(
                mixture, lambda n: mixture.sample(n, generator=gen), config.noise.sigma_min, config.noise.sigma_max,
                num_points=config.noise.num_bins, samples_per_point=4096, generator=gen, batch_size=1 << 16,
                spectrum=model.profile.spectrum, **model._profile_sampling_kwargs()).state_dict())
        trainer = train.build_trainer(config, Path(tmp))
        evaluate = Evaluate()
        trainer.callbacks.append(evaluate)
        trainer.fit(model)
    if trainer.global_step < steps:  # stopped early (a signal): not a result to cache
        raise RuntimeError(f'{dataset} {variant} seed {seed}: stopped at step {trainer.global_step} of {steps}')
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(evaluate.result))
    print(f'{dataset:10s} {variant:20s} seed {seed}: gap {evaluate.result["gap"]}', flush=True)
    return evaluate.result


def steps_to_reach(steps, quality, target):
    """First step (linear interpolation) at which `quality` (lower is better) reaches `target`."""
    for i, q in enumerate(quality):
        if q <= target:
            if i == 0:
                return steps[0]
            q0, s0 = quality[i - 1], steps[i - 1]
            return s0 + (steps[i] - s0) * (q0 - target) / (q0 - q)
    return None


def summarise(results, datasets, variants, seeds_by_dataset, out):
    import numpy as np

    lines = ['| dataset | σ distribution | gap at each eval step (mean ± std over seeds, nats) | final SWD | σ q10/q50/q90 (final) | speed-up vs lognormal | paired, per seed |',
             '| --- | --- | --- | --- | --- | --- | --- |']
    curves = {}
    for d in datasets:
        seeds = seeds_by_dataset[d]
        base = np.mean([results[d, 'lognormal', s]['gap'] for s in seeds], axis=0)
        steps = results[d, 'lognormal', seeds[0]]['step']
        for v in variants:
            gaps = np.array([results[d, v, s]['gap'] for s in seeds])
            mean = gaps.mean(0)
            curves[d, v] = (steps, mean)
            reach = steps_to_reach(steps, list(mean), base[-1])
            speedup = 'not reached' if reach is None else f'{steps_to_reach(steps, list(base), base[-1]) / reach:.2f}×'
            paired = []
            for s in seeds:
                # Lognormal's own first arrival at its final quality: it can plateau before the last step.
                target = results[d, 'lognormal', s]['gap']
                r = steps_to_reach(steps, results[d, v, s]['gap'], target[-1])
                paired.append('–' if r is None else f'{steps_to_reach(steps, target, target[-1]) / r:.2f}')
            paired = ', '.join(paired)
            swd = np.mean([results[d, v, s]['swd'][-1] for s in seeds])
            q = np.mean([results[d, v, s]['sigma_q10_50_90'][-1] for s in seeds], axis=0)
            cells = ' / '.join(f'{m:.2f}±{sd:.2f}' for m, sd in zip(mean, gaps.std(0)))
            lines.append(f'| {d} ({len(seeds)} seeds) | {v} | {cells} | {swd:.4f} | {q[0]:.3f} / {q[1]:.3f} / {q[2]:.2f} | {speedup} | {paired} |')
    header = f"evaluation steps: {steps}; seeds per dataset: {seeds_by_dataset}\n\n"
    (out / 'results.md').write_text(header + '\n'.join(lines) + '\n')
    print(header + '\n'.join(lines))

    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4))
    for ax, d in zip(np.atleast_1d(axes), datasets):
        for v in variants:
            ax.plot(*curves[d, v], 'o-', label=v, markersize=3)
        ax.set(title=d, xlabel='training steps', ylabel='exact-NLL gap (nats)', yscale='log')
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / 'curves.png', dpi=100)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[1])
    parser.add_argument('--datasets', nargs='+', default=['ring', 'tree', 'moons', 'swissroll'])
    parser.add_argument('--variants', nargs='+', default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    parser.add_argument('--steps', type=int, default=10000)
    parser.add_argument('--evals', nargs='+', type=int, default=[1000, 2000, 4000, 6000, 8000, 10000])
    parser.add_argument('--workers', type=int, default=os.cpu_count() or 1)
    parser.add_argument('--out', default='benchmarks/results/entropic_training')
    parser.add_argument('--summarise-only', action='store_true', help='summarise the cached runs without training')
    args = parser.parse_args()
    if 'lognormal' not in args.variants:
        parser.error('--variants must include lognormal (the baseline)')
    out = Path(args.out)
    if args.summarise_only:  # from the cached runs, over the seeds every dataset and variant has
        cached = lambda d, v, s: out / 'runs' / f'{d}-{v}-{s}.json'
        seeds = {d: [s for s in args.seeds if all(cached(d, v, s).is_file() for v in args.variants)] for d in args.datasets}
        results = {(d, v, s): json.loads(cached(d, v, s).read_text())
                   for d in args.datasets for s in seeds[d] for v in args.variants}
        return summarise(results, args.datasets, args.variants, seeds, out)
    jobs = [(d, v, s) for s in args.seeds for d in args.datasets for v in args.variants]
    with ProcessPoolExecutor(args.workers) as pool:
        futures = {job: pool.submit(run_one, *job, args.steps, set(args.evals), out) for job in jobs}
        results = {job: f.result() for job, f in futures.items()}
    summarise(results, args.datasets, args.variants, {d: args.seeds for d in args.datasets}, out)


if __name__ == '__main__':
    main()
