"""Training σ distributions compared on toy data and MNIST: quality against steps, and the speed-up.

    python -m benchmarks.entropic_training [--datasets ring tree moons swissroll mnist] [--seeds 0 1 2]
        [--steps 10000] [--evals 1000 2000 4000 6000 8000 10000] [--workers 2] [--out DIR] [--summarise-only]

Every run is `train.py`'s own Lightning loop (the same model, batch, optimizer, EMA) with one
σ distribution; runs differ only in `noise.*`. At each evaluation step the EMA model draws samples
with the 18-step Heun sampler. Toy data: 4000 samples; quality is the exact-NLL gap (mean −log p of
the samples minus the data's entropy, nats; 0 for samples of the data itself), and the sliced Wasserstein distance; the
table shows beside them the floor, the same sampler and noise with the data's exact denoiser.
MNIST (`configs/mnist/fast.yaml`, the 5,000 bundled digits): 1000 samples, 100 of each class
(conditional, guidance 1); quality is the Fréchet distance in the features of the project's digit
classifier (`fid.py --features classifier`; trained once per machine and cached) against all 5,000
digits. Fréchet distances compare only within one classifier: each MNIST run records its classifier's
fingerprint, and a cached run or a summary that mixes classifiers stops with an error.
Speed-up of a distribution = steps lognormal needs to first reach its final quality ÷ steps the
distribution needs for the same (mean over seeds, linear interpolation between evaluations;
'not reached' when it never gets there), and the same paired by seed (each seed's run against
lognormal's run with that seed). Variants: the fixed distributions, the entropic profile's
densities (entropic, gated, rescaled, importance-weighted), the structure density estimated
online ('structure'), the same times σ ('rescaled-structure', online) and, on the toy mixtures, the
structure density from the exact denoiser of the data's mixture, fixed from step 0 ('structure-oracle'). Each run's result is cached in DIR/runs/*.json, so an
interrupted sweep resumes; DIR/results.md and DIR/curves.png summarise.
"""

import argparse
import hashlib
import json
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path


VARIANTS = {
    'lognormal': [],
    'loguniform': ['noise.name=loguniform'],
    'logistic': ['noise.name=logistic'],
    'entropic': ['noise.name=entropic'],
    'entropic-importance': ['noise.name=entropic', 'noise.weighting=importance'],
    'entropic-gated': ['noise.name=entropic', 'noise.gate_c=0.1'],
    'rescaled': ['noise.name=entropic', 'noise.density=rescaled'],
    'structure': ['noise.name=entropic', 'noise.density=structure'],
    'rescaled-structure': ['noise.name=entropic', 'noise.density=rescaled-structure'],
    # The structure density of the data's exact profile (its mixture's own denoiser), fixed from step 0.
    'structure-oracle': ['noise.name=entropic', 'noise.density=structure', 'noise.warmup_steps=0',
                         'noise.refresh_every=1000000000'],
}


CONFIGS = {'ring': 'configs/toy/default.yaml', 'mnist': 'configs/mnist/fast.yaml'}  # else configs/toy/<name>.yaml
IMAGES = {'mnist'}
SAMPLES_PER_CLASS = 100  # MNIST: 1000 samples per evaluation
QUALITY = {'gap': 'exact-NLL gap (nats)', 'fd': 'classifier Fréchet distance'}


def classifier_path(data):
    """The cached digit classifier of fid.py (`--features classifier`), trained here if missing."""
    from evaluation import fidelity

    path, accuracy = fidelity.cached_classifier(data, Path.home() / '.cache' / 'cedm')
    if accuracy is not None:
        print(f'trained the digit classifier: held-out accuracy {accuracy:.3f}', flush=True)
    return path


def config_file(dataset):
    """The YAML experiment a dataset's runs start from."""
    return CONFIGS.get(dataset, f'configs/toy/{dataset}.yaml')


def toy_reference(mixture):
    """(4000 fresh samples of `mixture`, its entropy in nats by Monte Carlo over 100,000 samples, the
    generator's state after drawing them): what every toy evaluation compares with, the same for every
    run; each evaluation draws its SWD projections (and σ quantiles) from a generator in that state."""
    import torch

    generator = torch.Generator().manual_seed(1234)
    reference = mixture.sample(4000, generator=generator)
    entropy = mixture.entropy(100000, generator=generator)
    return reference, entropy, generator.get_state()


def exact_floors(dataset, seeds):
    """[{'gap', 'swd'} for each seed]: the toy evaluation's sampler (18-step Heun, ρ=7, 4000 samples
    from the initial noise of the seed) run with the data's exact denoiser, scored against the same
    reference as every evaluation: the floor any trained model is held to."""
    import torch

    import sampling
    from training.config import load_config
    from datasets import build_dataset
    from evaluation.metrics import mixture_nll, sliced_wasserstein

    config = load_config(config_file(dataset))
    mixture, s = build_dataset(config.data).mixture, config.sample
    sigmas = sampling.karras_sigmas(18, s.sigma_min, s.sigma_max, s.rho)
    reference, entropy, after_reference = toy_reference(mixture)
    floors = []
    for seed in seeds:
        noise = torch.randn(4000, 2, generator=torch.Generator().manual_seed(seed))
        x = sampling.sample(mixture.denoise, noise, sigmas, 'heun')
        generator = torch.Generator().set_state(after_reference)
        floors.append({'gap': mixture_nll(mixture, x) - entropy, 'swd': sliced_wasserstein(x, reference, generator=generator)})
    return floors


def classifier_fingerprint(path):
    """The first 16 hex digits of the SHA-256 of a classifier's weights file."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def check_one_classifier(results, dataset):
    """The one classifier fingerprint of `dataset`'s results (None for runs cached before fingerprints);
    raises SystemExit when they differ, since their Fréchet distances are in different features."""
    fingerprints = {r.get('classifier') for (d, *_), r in results.items() if d == dataset}
    if len(fingerprints) > 1:
        raise SystemExit(f'{dataset}: cached runs measured with different classifiers ({", ".join(map(str, sorted(fingerprints, key=str)))}): '
                         'their Fréchet distances are not comparable; rerun them in one --out')
    return fingerprints.pop() if fingerprints else None


def classifier_frechet(model, classifier, reference, seed):
    """Fréchet distance, in the classifier's features, between SAMPLES_PER_CLASS samples of each class
    (conditional, guidance 1) and `reference` (the features of the training digits)."""
    import torch
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    x = torch.cat([model.sample(SAMPLES_PER_CLASS, seed=seed + 1000 * k, class_label=k) for k in range(model.num_classes)])
    with torch.no_grad():
        features = classifier.features(x.clamp(-1, 1).cpu())
    return fid_statistics_to_metric(fid_features_to_statistics(features), fid_features_to_statistics(reference),
                                    verbose=False)['frechet_inception_distance']


def run_one(dataset, variant, seed, steps, evals, out, threads=1):
    """Train one configuration; returns {'step': [...], 'gap' or 'fd': [...], ('swd': [...],) 'sigma_q10_50_90': [...]}."""
    import lightning as L
    import torch

    torch.set_num_threads(threads)
    import train
    from training.config import load_config
    from entropy.profile import EntropyProfile
    from training.noise import profile_kwargs
    from evaluation.fidelity import DigitClassifier
    from evaluation.metrics import mixture_nll, sliced_wasserstein
    from training.module import EDMModule

    path = out / 'runs' / f'{dataset}-{variant}-{seed}.json'
    if dataset in IMAGES:
        from datasets import build_dataset
        weights = classifier_path(build_dataset(load_config(config_file(dataset)).data))
        fingerprint = classifier_fingerprint(weights)
    if path.is_file():
        cached = json.loads(path.read_text())
        if dataset in IMAGES and cached.get('classifier') != fingerprint:
            raise SystemExit(f'{path}: measured with classifier {cached.get("classifier")}, not {fingerprint} '
                             f'({weights}): move it aside or use another --out')
        return cached

    class Evaluate(L.Callback):
        def __init__(self):
            self.result = {'step': [], 'sigma_q10_50_90': []}
            if dataset in IMAGES:
                self.result['classifier'] = fingerprint
            self.toy = None  # `toy_reference` of the run's mixture, built at its first evaluation

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if trainer.global_step not in evals:
                return
            if dataset in IMAGES:
                quality = {'fd': classifier_frechet(module.sampling_model(), classifier, reference, seed)}
                gen = torch.Generator().manual_seed(1234)
            else:
                x = module.sampling_model().sample(4000, steps=18, solver='heun', schedule='karras', seed=seed)
                mixture = module.dataset.mixture
                self.toy = self.toy or toy_reference(mixture)
                reference_x, entropy, after_reference = self.toy
                gen = torch.Generator().set_state(after_reference)
                quality = {'gap': mixture_nll(mixture, x) - entropy,
                           'swd': sliced_wasserstein(x, reference_x, generator=gen)}
            sigma = module.noise.sample(20000, generator=gen, device=module.device)  # the training stream left untouched
            self.result['step'].append(trainer.global_step)
            for key, value in quality.items():
                self.result.setdefault(key, []).append(value)
            self.result['sigma_q10_50_90'].append(torch.quantile(sigma, torch.tensor([0.1, 0.5, 0.9])).tolist())

    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(config_file(dataset), VARIANTS[variant] + [
            f'seed={seed}', f'trainer.max_steps={steps}', f'run_dir={tmp}', 'trainer.progress_bar=false',
            f'trainer.plot_every={10 * steps}', f'trainer.ckpt_every={10 * steps}', 'trainer.log_every=500'])
        torch.manual_seed(seed)
        model = EDMModule(config)
        if dataset in IMAGES:
            classifier = DigitClassifier()
            classifier.load_state_dict(torch.load(weights, weights_only=True)['state_dict'])
            classifier.eval()
            with torch.no_grad():
                reference = classifier.features(model.dataset.images.cpu().float() / 127.5 - 1)
        if variant.endswith('-oracle'):
            mixture, gen = model.dataset.mixture, torch.Generator().manual_seed(seed)
            model.profile.load_state_dict(EntropyProfile.from_denoiser(
                mixture, lambda n: mixture.sample(n, generator=gen), config.noise.sigma_min, config.noise.sigma_max,
                num_points=config.noise.num_bins, samples_per_point=4096, generator=gen, batch_size=1 << 16,
                spectrum=model.profile.spectrum, **profile_kwargs(config.noise, model.dataset.dim)).state_dict())
        trainer = train.build_trainer(config, Path(tmp))
        evaluate = Evaluate()
        trainer.callbacks.append(evaluate)
        trainer.fit(model)
    if trainer.global_step < steps:  # stopped early (a signal): not a result to cache
        raise RuntimeError(f'{dataset} {variant} seed {seed}: stopped at step {trainer.global_step} of {steps}')
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(evaluate.result))
    key = 'fd' if dataset in IMAGES else 'gap'
    print(f'{dataset:10s} {variant:20s} seed {seed}: {key} {evaluate.result[key]}', flush=True)
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

    lines = ['| dataset | σ distribution | quality at each eval step (mean ± std over seeds; lower is better) | final SWD | σ q10/q50/q90 (final) | speed-up vs lognormal | paired, per seed |',
             '| --- | --- | --- | --- | --- | --- | --- |']
    curves = {}
    for d in datasets:
        seeds, key = seeds_by_dataset[d], 'fd' if d in IMAGES else 'gap'
        base = np.mean([results[d, 'lognormal', s][key] for s in seeds], axis=0)
        steps = results[d, 'lognormal', seeds[0]]['step']
        if key == 'gap':  # the same sampler with the exact denoiser: the same value at every evaluation
            floors = exact_floors(d, seeds)
            gap = np.array([f['gap'] for f in floors])
            lines.append(f"| {d} ({len(seeds)} seeds, {QUALITY[key]}) | exact denoiser (floor) | {gap.mean():.3f}±{gap.std():.3f} at every step "
                         f"| {np.mean([f['swd'] for f in floors]):.4f} | – | – | – |")
        for v in variants:
            quality = np.array([results[d, v, s][key] for s in seeds])
            mean = quality.mean(0)
            curves[d, v] = (steps, mean)
            reach = steps_to_reach(steps, list(mean), base[-1])
            speedup = 'not reached' if reach is None else f'{steps_to_reach(steps, list(base), base[-1]) / reach:.2f}×'
            paired = []
            for s in seeds:
                # Lognormal's own first arrival at its final quality: it can plateau before the last step.
                target = results[d, 'lognormal', s][key]
                r = steps_to_reach(steps, results[d, v, s][key], target[-1])
                paired.append('–' if r is None else f'{steps_to_reach(steps, target, target[-1]) / r:.2f}')
            paired = ', '.join(paired)
            swd = f"{np.mean([results[d, v, s]['swd'][-1] for s in seeds]):.4f}" if key == 'gap' else '–'
            q = np.mean([results[d, v, s]['sigma_q10_50_90'][-1] for s in seeds], axis=0)
            cells = ' / '.join(f'{m:.2f}±{sd:.2f}' for m, sd in zip(mean, quality.std(0)))
            lines.append(f'| {d} ({len(seeds)} seeds, {QUALITY[key]}) | {v} | {cells} | {swd} | {q[0]:.3f} / {q[1]:.3f} / {q[2]:.2f} | {speedup} | {paired} |')
    classifiers = {d: check_one_classifier(results, d) for d in datasets if d in IMAGES}
    header = f"evaluation steps: {steps}; seeds per dataset: {seeds_by_dataset}"
    header += ''.join(f'; {d} classifier {c or "not recorded"}' for d, c in classifiers.items()) + '\n\n'
    (out / 'results.md').write_text(header + '\n'.join(lines) + '\n')
    print(header + '\n'.join(lines))

    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4))
    for ax, d in zip(np.atleast_1d(axes), datasets):
        for v in variants:
            ax.plot(*curves[d, v], 'o-', label=v, markersize=3)
        ax.set(title=d, xlabel='training steps', ylabel=QUALITY['fd' if d in IMAGES else 'gap'], yscale='log')
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / 'curves.png', dpi=100)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[1])
    parser.add_argument('--datasets', nargs='+', default=['ring', 'tree', 'moons', 'swissroll'],
                        choices=['ring', 'tree', 'moons', 'swissroll', 'gmm', 'mnist'])
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
    if set(args.datasets) & IMAGES and any(v.endswith('-oracle') for v in args.variants):
        parser.error('--variants: the oracle variants need an exact mixture (toy data only)')
    out = Path(args.out)
    if args.summarise_only:  # from the cached runs, over the seeds every dataset and variant has
        cached = lambda d, v, s: out / 'runs' / f'{d}-{v}-{s}.json'
        seeds = {d: [s for s in args.seeds if all(cached(d, v, s).is_file() for v in args.variants)] for d in args.datasets}
        for d in args.datasets:
            if not seeds[d]:
                parser.error(f'--summarise-only: no seed of {d} has a cached run of every variant in {out / "runs"}')
        results = {(d, v, s): json.loads(cached(d, v, s).read_text())
                   for d in args.datasets for s in seeds[d] for v in args.variants}
        return summarise(results, args.datasets, args.variants, seeds, out)
    jobs = [(d, v, s) for s in args.seeds for d in args.datasets for v in args.variants]
    if set(args.datasets) & IMAGES:  # once, before the workers would race to train it
        from datasets import build_dataset
        from training.config import load_config
        classifier_path(build_dataset(load_config(CONFIGS['mnist']).data))
    threads = max(1, (os.cpu_count() or 1) // args.workers)
    with ProcessPoolExecutor(args.workers) as pool:
        futures = {job: pool.submit(run_one, *job, args.steps, set(args.evals), out, threads) for job in jobs}
        results = {job: f.result() for job, f in futures.items()}
    summarise(results, args.datasets, args.variants, {d: args.seeds for d in args.datasets}, out)


if __name__ == '__main__':
    main()
