"""Training σ distributions compared on toy data and MNIST: proper scores against steps, paired by seed.

    python -m benchmarks.entropic_training [--datasets ...] [--variants ...] [--seeds ...] [--steps N]
        [--evals ...] [--workers 2] [--out DIR] [--protocol FILE] [--variant-config FILE] [--summarise-only]
    python -m benchmarks.entropic_training --widen-grid benchmarks/protocol/protocol-v3-grid.yaml --threads 1

What runs is fixed in two committed files, read before anything trains: benchmarks/protocol/protocol.yaml
(datasets, budget, evaluation steps, reported seeds, the lognormal tuning grid and its own seeds) and
benchmarks/protocol/variants.yaml (each σ distribution's complete `noise.*` settings). Every run is
`train.py`'s own Lightning loop (same model, batch, optimizer, EMA) with one σ distribution; runs differ
only in `noise.*`. A run records the settings it trained with; a cached run with other settings is
refused, so nothing cached under one protocol is summarised under another.

Toy data (exact Gaussian mixtures: ring, tree, moons, swissroll; held out: pinwheel and a random
multi-scale mixture, `datasets.toy`): at each evaluation the EMA model draws samples with the 18-step
Heun sampler (initial noise from the run's seed) and is scored by
- reverse KL(q‖p) = E_q[−log p] − Ĥ_kNN(q) (nats; `evaluation.divergence.reverse_kl`),
- SWD and MMD² against fresh draws of the data (`evaluation.metrics`),
- the model's own NLL of fresh held-out data minus H(p) (the I-MMSE bound, `entropy.likelihood.nll`:
  an estimate of KL(p‖p_model) from above, in nats),
- mode occupancy KL (`evaluation.divergence.mode_occupancy`), and
- the former "gap" E_q[−log p] − H(p), kept only as a column labelled cross-entropy: it is no divergence
  (≈ 0 for a collapse onto one of equal modes, negative for samples sharper than the data).
Every metric has its floor: the same sampler, noise and scoring with the data's exact denoiser.
MNIST (`configs/mnist/fast.yaml`, the 5,000 bundled digits; `mnist-x4`: the same at `data.scale=4`, a
representation shift): 1000 samples, 100 of each class (conditional, guidance 1), scored by the Fréchet
distance in the features of the project's digit classifier (`fid.py --features classifier`; trained once
per machine and cached) against all 5,000 digits. Fréchet distances compare only within one
classifier: each MNIST run records its classifier's fingerprint, and a cached run or a summary that
mixes classifiers stops with an error.

Baselines: EDM's default lognormal, log-uniform, and a lognormal tuned per dataset on a (P_mean, P_std)
grid trained on the protocol's tuning seeds, scored at their last step and never reported (the
protocol's reported and tuning seeds must be disjoint; every entry point checks). Speed-up, per seed:
steps the tuned baseline needs to reach its own value at 25/50/100% of the budget ÷ steps the variant
needs to reach it (`benchmarks.seed_statistics`: interpolated in log steps); the median over seeds with
the seed range [min, max] (not a 95% interval: it covers the median with probability 1 − 2·0.5^N for N
seeds, 93.75% for 5, 75% for 3). Paired differences of every metric at those steps with t intervals. Curves are
never averaged before a ratio. Each run's result is cached in DIR/runs/*.json (tuning runs in
DIR/tuning/), so an interrupted sweep resumes; a run trains in DIR/partial/ with a checkpoint every 10%
of its budget, and a killed one resumes from it (bit-identical curves; its seconds count the steps the
checkpoint kept); a run whose settings equal another variant's cached run (the tuned lognormal where
the tuning picks EDM's default) is that run, copied with `same_as`. DIR/results.md and DIR/curves.png
summarise, and `--summarise-only` reproduces them from the cache. `--widen-grid AMENDMENT` (#34) widens the
toy tuning grids past every edge a choice by KL, SWD or mean rank lies on, by the amendment's rule and
budget, and writes DIR/tuning-widened.md; it changes no reported run.
"""

import argparse
import copy
import hashlib
import json
import math
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import yaml

from files import write_atomically


PROTOCOL = 'benchmarks/protocol/protocol.yaml'
VARIANTS_FILE = 'benchmarks/protocol/variants.yaml'

# The config a dataset's runs start from (else configs/toy/<name>.yaml). The held-out sets start from the
# ring's and are given as the exact mixture of their builder (`data_overrides`).
CONFIGS = {'ring': 'configs/toy/default.yaml', 'mnist': 'configs/mnist/fast.yaml', 'mnist-x4': 'configs/mnist/fast.yaml',
           'mnist-x0.25': 'configs/mnist/fast.yaml',
           'pinwheel': 'configs/toy/default.yaml', 'multiscale': 'configs/toy/default.yaml'}
HELD_OUT_BUILDERS = ('pinwheel', 'multiscale')
TOY = ('ring', 'tree', 'moons', 'swissroll', 'gmm') + HELD_OUT_BUILDERS
# mnist-x4: a representation shift, the digits at data.scale 4 (pixels in [−4, 4]) with everything else of
# fast.yaml kept (EDM's sigma_data 0.5, lognormal, σ range), like latents whose scale factor was left out;
# mnist-x0.25 the shift the other way (#34).
IMAGES = {'mnist': [], 'mnist-x4': ['data.scale=4'], 'mnist-x0.25': ['data.scale=0.25']}
SAMPLES_PER_CLASS = 100  # MNIST: 1000 samples per evaluation
REFERENCE_SEED, HELDOUT_SEED, NLL_SEED = 1234, 4321, 5678

METRICS = {
    'kl': 'reverse KL(q‖p) (nats)',
    'swd': 'SWD',
    'mmd': 'MMD²',
    'nll': 'held-out NLL − H(p) (nats, I-MMSE bound)',
    'occupancy_kl': 'mode occupancy KL (nats)',
    'cross_entropy': 'cross-entropy E_q[−log p] − H(p) (nats; not a divergence)',
    'fd': 'classifier Fréchet distance',
}
TOY_METRICS = ('kl', 'swd', 'mmd', 'nll', 'occupancy_kl', 'cross_entropy')
GRID_PREFIX = 'lognormal_P'  # tuning-grid runs: lognormal_P<P_mean>_<P_std>
ROLES = ('baseline', 'cedm', 'diagnostic')


# ------------------------------------------------------------------------------------ the protocol

def file_sha(path):
    """The first 16 hex digits of the SHA-256 of a file."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def check_disjoint(seeds, tuning_seeds):
    """ValueError unless no reported seed is a tuning seed."""
    shared = sorted(set(seeds) & set(tuning_seeds))
    if shared:
        raise ValueError(f'seeds {shared} are tuning seeds {sorted(tuning_seeds)}: the runs that chose the tuned '
                         'lognormal are never reported')


def load_protocol(path=PROTOCOL):
    """The protocol file as a dict (plus 'path' and 'sha'), checked: reported and tuning seeds disjoint,
    evaluation fractions increasing to 1 with gaps of at most 10% of the budget, speed-up fractions among them."""
    protocol = yaml.safe_load(Path(path).read_text())
    protocol.update(path=str(path), sha=file_sha(path))
    check_disjoint(protocol['seeds'], protocol['tuning_seeds'])
    fractions = protocol['eval_fractions']
    gaps = [b - a for a, b in zip([0.0] + fractions, fractions)]
    if fractions != sorted(set(fractions)) or fractions[-1] != 1.0 or min(gaps) <= 0 or max(gaps) > 0.1 + 1e-9:
        raise ValueError(f'{path}: eval_fractions must increase to 1.0 in steps of at most 0.1 (got {fractions})')
    if not set(protocol['speedup_fractions']) <= set(fractions):
        raise ValueError(f'{path}: speedup_fractions {protocol["speedup_fractions"]} must be evaluation fractions')
    return protocol


def eval_steps(protocol, steps):
    """The evaluation steps of a run of `steps` steps: each of the protocol's fractions of it."""
    evals = sorted({round(f * steps) for f in protocol['eval_fractions']} - {0})
    for f in protocol['speedup_fractions']:
        if f * steps not in evals:
            raise ValueError(f'{steps} steps: {f} of them is not a whole evaluation step (use a multiple of 4)')
    return evals


def load_variants(path=VARIANTS_FILE):
    """{name: {'role', 'noise', 'default', 'tuned', 'oracle'}} from the variants file, checked."""
    variants = yaml.safe_load(Path(path).read_text())
    for name, spec in variants.items():
        if name.startswith(GRID_PREFIX) or spec.get('role') not in ROLES or not isinstance(spec.get('noise'), dict):
            raise ValueError(f'{path}: variant {name!r} needs a role ({", ".join(ROLES)}) and a noise mapping '
                             f'(and no name starting {GRID_PREFIX})')
        spec.setdefault('default', True)
        spec.setdefault('tuned', False)
        spec.setdefault('oracle', False)
    return variants


def grid_variant(P_mean, P_std):
    """The name of a tuning-grid run."""
    return f'{GRID_PREFIX}{P_mean:+.2f}_{P_std:.2f}'


def parse_grid_variant(name):
    """(P_mean, P_std) of a tuning-grid run's name, or None for any other variant."""
    if not name.startswith(GRID_PREFIX):
        return None
    P_mean, P_std = name[len(GRID_PREFIX):].split('_')
    return float(P_mean), float(P_std)


def tuning_grid(protocol):
    return [(m, s) for m in protocol['tuning']['P_mean'] for s in protocol['tuning']['P_std']]


def noise_overrides(variants, variant, tuned=None):
    """The `noise.*` overrides of a variant (tuned: {'P_mean', 'P_std'} of the dataset's tuning, needed by
    tuned variants) or of a tuning-grid run."""
    point = parse_grid_variant(variant)
    if point is not None:
        noise = {**next(s for s in variants.values() if s['tuned'])['noise'], 'P_mean': point[0], 'P_std': point[1]}
    else:
        spec = variants[variant]
        noise = dict(spec['noise'])
        if spec['tuned']:
            if tuned is None:
                raise ValueError(f'{variant}: a tuned variant needs the tuning result of its dataset')
            noise.update(P_mean=tuned['P_mean'], P_std=tuned['P_std'])
    return [f'noise.{key}={json.dumps(value)}' for key, value in noise.items()]


def held_out_mixture(dataset, protocol):
    """The exact mixture of a held-out set (`datasets.toy`), the multi-scale one from the protocol's seed."""
    from datasets import toy

    return toy.pinwheel() if dataset == 'pinwheel' else toy.multiscale(seed=protocol['multiscale_seed'])


def data_overrides(dataset, protocol):
    """`data.*` overrides: a held-out set as `data.name=gmm` with its builder's weights, means and covariances
    (the same mixture whether or not the data registry has it, so cached runs stay valid); an image set's
    own (IMAGES); none otherwise."""
    if dataset in IMAGES:
        return list(IMAGES[dataset])
    if dataset not in HELD_OUT_BUILDERS:
        return []
    mixture = held_out_mixture(dataset, protocol)
    return ['data.name=gmm', f'data.weights={json.dumps(mixture.weights.tolist())}',
            f'data.means={json.dumps(mixture.means.tolist())}', f'data.covs={json.dumps(mixture.covs.tolist())}']


def config_file(dataset):
    """The YAML experiment a dataset's runs start from."""
    return CONFIGS.get(dataset, f'configs/toy/{dataset}.yaml')


def load_dataset_config(dataset, protocol, overrides=()):
    from config import load_config

    return load_config(config_file(dataset), data_overrides(dataset, protocol) + list(overrides))


# ------------------------------------------------------------------------------------ measurements

def classifier_path(data, out):
    """The digit classifier (fid.py's `--features classifier`) that scores the sweep in `out`: kept there,
    beside the runs it measured, so that a sweep resumed on another machine scores with the same weights
    (retrained elsewhere, it would differ in the last bits and its distances would not compare); trained
    there if missing."""
    from evaluation import fidelity

    path, accuracy = fidelity.cached_classifier(data, out)
    if accuracy is not None:
        print(f'trained the digit classifier: held-out accuracy {accuracy:.3f}', flush=True)
    return path


def toy_reference(mixture, evaluation):
    """What every evaluation of a toy run is scored against, the same for every run: {'reference':
    `samples` fresh draws of `mixture` (on the CPU), 'entropy': its entropy in nats by Monte Carlo over
    100,000 more, 'after_reference': the generator's state after drawing them (each evaluation draws its
    SWD projections and σ quantiles from a generator in that state), 'heldout': `heldout` fresh points
    for the model's NLL, from their own seed}."""
    import torch

    mixture = copy.deepcopy(mixture).to('cpu')
    generator = torch.Generator().manual_seed(REFERENCE_SEED)
    reference = mixture.sample(evaluation['samples'], generator=generator)
    entropy = mixture.entropy(100000, generator=generator)
    heldout = mixture.sample(evaluation['heldout'], generator=torch.Generator().manual_seed(HELDOUT_SEED))
    return {'mixture': mixture, 'reference': reference, 'entropy': entropy, 'after_reference': generator.get_state(),
            'heldout': heldout}


def toy_metrics(x, denoiser, reference, evaluation, device='cpu'):
    """({metric: value}, the generator after the SWD projections) of samples x [n, 2] from a sampler that
    used `denoiser` (x, σ [n]) -> x0_hat, against `toy_reference`'s dict."""
    import torch

    from entropy.likelihood import nll
    from evaluation.divergence import mode_occupancy, reverse_kl
    from evaluation.metrics import mmd, sliced_wasserstein

    mixture, entropy = reference['mixture'], reference['entropy']
    x = x.detach().cpu()
    generator = torch.Generator().set_state(reference['after_reference'])
    kl = reverse_kl(x, mixture.log_prob, k=evaluation['knn_k'])
    heldout = reference['heldout'].to(device)
    model_nll = nll(denoiser, heldout, num_points=evaluation['nll_points'], num_noise=evaluation['nll_noise'],
                    generator=torch.Generator(device=device).manual_seed(NLL_SEED))
    metrics = {'kl': kl.kl, 'cross_entropy': kl.cross_entropy - entropy,
               'swd': sliced_wasserstein(x, reference['reference'], generator=generator),
               'mmd': mmd(x, reference['reference']), 'occupancy_kl': mode_occupancy(x, mixture).kl,
               'nll': model_nll.mean().item() - entropy}
    return metrics, generator


def exact_floors(dataset, seeds, protocol=None):
    """[{metric: value, 'occupancy_chance': ...} for each seed]: the toy evaluation's sampler (18-step Heun,
    ρ=7, the initial noise of the seed) and NLL run with the data's exact denoiser, scored against the same
    reference as every evaluation: the floor any trained model is held to."""
    import torch

    import sampling
    from datasets import build_dataset

    protocol = protocol or load_protocol()
    evaluation = protocol['evaluation']
    config = load_dataset_config(dataset, protocol)
    mixture, s = build_dataset(config.data).mixture, config.sample
    sigmas = sampling.karras_sigmas(18, s.sigma_min, s.sigma_max, s.rho)
    reference = toy_reference(mixture, evaluation)
    floors = []
    for seed in seeds:
        noise = torch.randn(evaluation['samples'], 2, generator=torch.Generator().manual_seed(seed))
        x = sampling.sample(reference['mixture'].denoise, noise, sigmas, 'heun')
        metrics, _ = toy_metrics(x, reference['mixture'].denoise, reference, evaluation)
        floors.append({**metrics, 'occupancy_chance': (reference['mixture'].num_components - 1) / (2 * len(x))})
    return floors


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
        features = classifier.features((x.cpu() / model.config.data.scale).clamp(-1, 1))  # pixel units
    return fid_statistics_to_metric(fid_features_to_statistics(features), fid_features_to_statistics(reference),
                                    verbose=False)['frechet_inception_distance']


def run_path(out, dataset, variant, seed):
    folder = 'tuning' if parse_grid_variant(variant) else 'runs'
    return Path(out) / folder / f'{dataset}-{variant}-{seed}.json'


def run_settings(dataset, variant, seed, steps, protocol, variants, tuned=None):
    """What a run is trained and scored with, as its cache records it; checks the seed is of the right kind."""
    if parse_grid_variant(variant) is not None:
        if seed not in protocol['tuning_seeds']:
            raise ValueError(f'{variant}: tuning-grid runs use the tuning seeds {protocol["tuning_seeds"]} only (got {seed})')
    else:
        check_disjoint([seed], protocol['tuning_seeds'])
    data = data_overrides(dataset, protocol)
    return {'noise': noise_overrides(variants, variant, tuned), 'steps': steps,
            'data': hashlib.sha256(json.dumps(data).encode()).hexdigest()[:16] if data else None,
            'evaluation': None if dataset in IMAGES else protocol['evaluation']}


def cached_twin(out, dataset, variant, seed, variants, settings):
    """The cached run of another variant with exactly these settings (the tuned lognormal where the tuning
    picks EDM's default), marked `same_as`: one run, not two trained alike. None if there is none."""
    for other in variants:
        path = run_path(out, dataset, other, seed)
        if other != variant and path.is_file():
            cached = json.loads(path.read_text())
            if cached.get('settings') == settings:
                return {**cached, 'same_as': other}
    return None


def partial_dir(out, dataset, variant, seed, settings):
    """Where a run trains until it is cached: named by its settings, so a changed protocol starts afresh."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    return Path(out) / 'partial' / f'{dataset}-{variant}-{seed}-{digest}'


def run_one(dataset, variant, seed, steps, evals, out, threads=1, protocol=None, variants=None, tuned=None):
    """Train one configuration (or return its cached result); returns {'step': [...], one list per metric,
    'sigma_q10_50_90': [...], 'settings', 'wall_s', 'cpu_s', 'eval_s', 'eval_cpu_s'} (seconds: wall and
    process CPU time of the whole run and of its evaluations). `protocol`, `variants`: the
    loaded files (default: the committed ones); `tuned`: the dataset's tuning result, for tuned variants."""
    import lightning as L
    import torch

    torch.set_num_threads(threads)
    import train
    from datasets.images import to_data
    from entropy.profile import EntropyProfile
    from evaluation.fidelity import DigitClassifier, classifier_fingerprint
    from checkpoint_file import read_checkpoint
    from training.module import EDMModule
    from entropy import profile_kwargs

    protocol, variants = protocol or load_protocol(), variants or load_variants()
    settings = run_settings(dataset, variant, seed, steps, protocol, variants, tuned)
    path = run_path(out, dataset, variant, seed)
    if dataset in IMAGES:
        from datasets import build_dataset
        weights = classifier_path(build_dataset(load_dataset_config(dataset, protocol).data), out)
        fingerprint = classifier_fingerprint(weights)
    if path.is_file():
        cached = json.loads(path.read_text())
        # A tuning grid need only be scored by one classifier, its own (`choose_tuned` checks).
        tuning = parse_grid_variant(variant) is not None
        if dataset in IMAGES and cached.get('classifier') != fingerprint and not tuning:
            raise SystemExit(f'{path}: measured with classifier {cached.get("classifier")}, not {fingerprint} '
                             f'({weights}): move it aside or use another --out')
        if cached.get('settings') != settings:
            raise SystemExit(f'{path}: trained or scored with other settings ({cached.get("settings")}) than now '
                             f'({settings}): move it aside or use another --out')
        return cached
    twin = cached_twin(out, dataset, variant, seed, variants, settings)
    if twin is not None and (dataset not in IMAGES or twin.get('classifier') == fingerprint):
        write_atomically(path, lambda tmp: tmp.write_text(json.dumps(twin)))
        return twin
    evaluation = protocol['evaluation']

    class Evaluate(L.Callback):
        """Scores the model at the `evals` steps; its state (the scores so far, and the seconds spent in the
        steps a checkpoint keeps) goes into the run's checkpoints, so a resumed run continues the curves."""
        def __init__(self):
            self.result = {'step': [], 'sigma_q10_50_90': []}
            if dataset in IMAGES:
                self.result['classifier'] = fingerprint
            self.toy = None  # `toy_reference` of the run's mixture, built at its first evaluation
            self.seconds = self.cpu_seconds = 0.0
            self.before = (0.0, 0.0)  # wall and CPU seconds of the run before this process resumed it
            self.start = (time.perf_counter(), time.process_time())

        def elapsed(self):
            wall, cpu = time.perf_counter() - self.start[0], time.process_time() - self.start[1]
            return self.before[0] + wall, self.before[1] + cpu

        def state_dict(self):
            return {'result': self.result, 'eval': (self.seconds, self.cpu_seconds), 'elapsed': self.elapsed()}

        def load_state_dict(self, state):
            self.result, (self.seconds, self.cpu_seconds), self.before = state['result'], state['eval'], state['elapsed']

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if trainer.global_step not in evals:
                return
            start, start_cpu = time.perf_counter(), time.process_time()
            model = module.sampling_model()
            if dataset in IMAGES:
                quality = {'fd': classifier_frechet(model, classifier, reference, seed)}
                gen = torch.Generator().manual_seed(REFERENCE_SEED)
            else:
                x = model.sample(evaluation['samples'], steps=18, solver='heun', schedule='karras', seed=seed)
                self.toy = self.toy or toy_reference(module.dataset.mixture, evaluation)
                quality, gen = toy_metrics(x, model.sampling_denoiser(), self.toy, evaluation, module.device)
            sigma = module.noise.sample(20000, generator=gen, device=module.device)  # the training stream left untouched
            self.result['step'].append(trainer.global_step)
            for key, value in quality.items():
                self.result.setdefault(key, []).append(value)
            self.result['sigma_q10_50_90'].append(torch.quantile(sigma.cpu(), torch.tensor([0.1, 0.5, 0.9])).tolist())
            self.seconds += time.perf_counter() - start
            self.cpu_seconds += time.process_time() - start_cpu

    # Trained in DIR/partial/ with a checkpoint every 10% of the budget: a killed run resumes from its last one.
    work = partial_dir(out, dataset, variant, seed, settings)
    last = work / 'checkpoints' / 'last.ckpt'
    config = load_dataset_config(dataset, protocol, settings['noise'] + [
        f'seed={seed}', f'trainer.max_steps={steps}', f'run_dir={work}', 'trainer.progress_bar=false',
        f'trainer.plot_every={10 * steps}', f'trainer.ckpt_every={max(steps // 10, 1)}', 'trainer.log_every=500'])
    checkpoint = None
    if last.is_file():
        config.resume = str(last)
        checkpoint, _ = read_checkpoint(last)
    evaluate = Evaluate()
    torch.manual_seed(seed)
    model = EDMModule(config, spectrum=checkpoint is None)  # a checkpoint brings its spectrum
    if dataset in IMAGES:
        classifier = DigitClassifier()
        classifier.load_state_dict(torch.load(weights, weights_only=True)['state_dict'])
        classifier.eval()
        with torch.no_grad():
            reference = classifier.features(to_data(model.dataset.images.cpu()))
    if checkpoint is None and parse_grid_variant(variant) is None and variants[variant]['oracle']:  # resumed: its own
        mixture, gen = model.dataset.mixture, torch.Generator().manual_seed(seed)
        model.profile.load_state_dict(EntropyProfile.from_denoiser(
            mixture, lambda n: mixture.sample(n, generator=gen), config.noise.sigma_min, config.noise.sigma_max,
            num_points=config.noise.num_bins, samples_per_point=4096, generator=gen, batch_size=1 << 16,
            spectrum=model.profile.spectrum, **profile_kwargs(config.noise, model.dataset.dim)).state_dict())
    trainer = train.build_trainer(config, work, checkpoint)
    # Before `Checkpoints`: the checkpoint of an evaluation step holds that step's scores.
    trainer.callbacks.insert(0, evaluate)
    trainer.fit(model, ckpt_path=config.resume)
    if trainer.global_step < steps:  # stopped early (a signal): resumed from its checkpoint next time
        raise RuntimeError(f'{dataset} {variant} seed {seed}: stopped at step {trainer.global_step} of {steps}')
    wall, cpu = evaluate.elapsed()
    evaluate.result.update(settings=settings, wall_s=wall, cpu_s=cpu, eval_s=evaluate.seconds,
                           eval_cpu_s=evaluate.cpu_seconds)
    write_atomically(path, lambda tmp: tmp.write_text(json.dumps(evaluate.result)))  # a kill leaves no half a cache
    shutil.rmtree(work)
    key = 'fd' if dataset in IMAGES else 'kl'
    print(f'{dataset:10s} {variant:20s} seed {seed}: {key} {[round(v, 4) for v in evaluate.result[key]]} '
          f'({evaluate.result["wall_s"]:.0f} s)', flush=True)
    return evaluate.result


def curve_metrics(dataset):
    """The metrics whose curves give speed-ups and figures: classifier FD on images, reverse KL and SWD on toy data."""
    return ['fd'] if dataset in IMAGES else ['kl', 'swd']


# ------------------------------------------------------------------------------------ tuning

def tuning_metrics(dataset, protocol):
    return ['fd'] if dataset in IMAGES else list(protocol['tuning']['metrics'])


def choose_tuned(results, dataset, protocol):
    """The tuned lognormal of `dataset` from the grid's runs on the TUNING seeds only (results of any other
    seed are not read): each metric's final value averaged over the tuning seeds, ranked within the grid
    (ties share their mean rank, a non-finite value ranks last); the lowest mean rank wins, ties by the
    first metric. An image grid must be scored by one classifier. Returns {'P_mean', 'P_std', 'rows':
    [(P_mean, P_std, {metric: mean}, mean rank)], 'classifier': the grid's fingerprint (images) or None}."""
    import numpy as np
    import scipy.stats

    seeds, metrics, grid = protocol['tuning_seeds'], tuning_metrics(dataset, protocol), tuning_grid(protocol)
    missing = [(dataset, grid_variant(*p), s) for p in grid for s in seeds if (dataset, grid_variant(*p), s) not in results]
    if missing:
        raise KeyError(f'{dataset}: tuning runs missing: {missing[:3]}{" ..." if len(missing) > 3 else ""}')
    classifier = check_one_classifier({(dataset, grid_variant(*p), s): results[dataset, grid_variant(*p), s]
                                       for p in grid for s in seeds}, dataset) if dataset in IMAGES else None
    means = [{m: float(np.mean([results[dataset, grid_variant(*p), s][m][-1] for s in seeds])) for m in metrics}
             for p in grid]
    ranks = np.mean([scipy.stats.rankdata([v[m] if math.isfinite(v[m]) else math.inf for v in means])
                     for m in metrics], axis=0)
    best = min(range(len(grid)), key=lambda i: (ranks[i], means[i][metrics[0]]))
    rows = [(p[0], p[1], means[i], float(ranks[i])) for i, p in enumerate(grid)]
    return {'P_mean': grid[best][0], 'P_std': grid[best][1], 'rows': rows, 'classifier': classifier}


def grid_edge(value, key, protocol):
    """Whether `value` is the lowest or highest of the tuning grid's `key` values (of which there are several)."""
    values = protocol['tuning'][key]
    return len(values) > 1 and value in (min(values), max(values))


# ------------------------------------------------------------------------------------ widening the tuning grid (#34)

WIDEN_CRITERIA = ('kl', 'swd', 'mean_rank')


def load_widening(path):
    """(the amendment, its base protocol) of a grid-widening file such as protocol-v3-grid.yaml, checked: the
    base protocol must be the one the amendment was written against (its recorded SHA-256 prefix)."""
    amendment = yaml.safe_load(Path(path).read_text())
    protocol = load_protocol(amendment['base'])
    if protocol['sha'] != amendment['base_sha']:
        raise ValueError(f'{path}: written against {amendment["base"]} sha {amendment["base_sha"]}, now {protocol["sha"]}')
    if not set(amendment['criteria']) <= set(WIDEN_CRITERIA) or amendment['step']['P_std'] <= 0:
        raise ValueError(f'{path}: criteria among {WIDEN_CRITERIA}, a positive P_std step')
    amendment.update(path=str(path), sha=file_sha(path))
    return amendment, protocol


def grid_choices(results, dataset, protocol, axes):
    """choose_tuned on the product grid `axes` {'P_mean': [...], 'P_std': [...]}: {'kl', 'swd', 'mean_rank':
    (P_mean, P_std)} (best mean final KL, best mean final SWD, lowest mean rank) and the rows."""
    grid_protocol = {**protocol, 'tuning': {**protocol['tuning'], **axes}}
    tuned = choose_tuned(results, dataset, grid_protocol)
    finite = lambda x: x if math.isfinite(x) else math.inf
    best = lambda m: min(tuned['rows'], key=lambda r: (finite(r[2][m]), r[3]))[:2]
    return {'kl': best('kl'), 'swd': best('swd'), 'mean_rank': (tuned['P_mean'], tuned['P_std'])}, tuned['rows']


def grid_extension(point, key, axes, step):
    """The value beyond the edge of `axes[key]` that `point` lies on (one `step` further), None if the point is
    inside, or 'bound' where that value would be a P_std ≤ 0."""
    values, value = axes[key], point[0 if key == 'P_mean' else 1]
    if min(values) < value < max(values):
        return None
    new = round(value - step if value == min(values) else value + step, 2)
    return 'bound' if key == 'P_std' and new <= 0 else new


def widen_grid(path, out, threads=1, train=True, run=None):
    """Widen each dataset's tuning grid by the amendment at `path` (its rule is written there) from the runs
    cached in OUT/tuning/, training the missing ones one at a time (`train`; else stop at the first missing).
    Replaying the rule from the base grid is deterministic, so an interrupted widening resumes where it
    stopped. Returns {'datasets': {d: {'axes', 'choices', 'rows', 'runs'}}, 'spent_cpu_s', 'added_runs',
    'stopped', 'fingerprints': {d: data fingerprints of its runs}} and writes OUT/tuning-widened.md."""
    amendment, protocol = load_widening(path)
    variants = load_variants()
    run = run or run_one
    steps, seeds, step = protocol['steps'], protocol['tuning_seeds'], amendment['step']
    base = set(tuning_grid(protocol))
    results, state = {}, {'spent_cpu_s': 0.0, 'added_runs': 0, 'stopped': None}
    fingerprints = {}

    def obtain(dataset, axes):
        """Every run of the product grid `axes` into `results`; False when one is missing and may not be trained."""
        for point in [(m, s) for m in axes['P_mean'] for s in axes['P_std']]:
            for seed in seeds:
                key = (dataset, grid_variant(*point), seed)
                if key in results:
                    continue
                expected = run_settings(dataset, key[1], seed, steps, protocol, variants)
                cache = run_path(out, *key)
                if cache.is_file():
                    result = json.loads(cache.read_text())
                    # The held-out mixtures are rebuilt per machine; their floats (hence fingerprint) may differ
                    # in the last bits between the CPUs that ran the grid: everything else must agree.
                    if {**result['settings'], 'data': None} != {**expected, 'data': None}:
                        raise SystemExit(f'{cache}: trained with {result["settings"]}, not {expected}')
                elif state['spent_cpu_s'] >= amendment['budget_cpu_s']:  # first: a replay stops where the run did
                    state['stopped'] = f'budget of {amendment["budget_cpu_s"]} CPU-s spent, before {cache.name}'
                    return False
                elif not train:
                    state['stopped'] = f'not cached (no training asked): {cache.name}'
                    return False
                else:
                    result = run(dataset, key[1], seed, steps, {steps}, out, threads, protocol, variants)
                results[key] = result
                fingerprints.setdefault(dataset, set()).add(result['settings']['data'])
                if point not in base:
                    state['spent_cpu_s'] += result.get('cpu_s', 0.0)
                    state['added_runs'] += 1
        return True

    axes = {d: {k: sorted(protocol['tuning'][k]) for k in ('P_mean', 'P_std')} for d in amendment['datasets']}
    for d in amendment['datasets']:
        if not obtain(d, axes[d]):
            raise SystemExit(f'{d}: the base grid is not complete in {Path(out) / "tuning"} ({state["stopped"]})')
    base_choices = {d: grid_choices(results, d, protocol, axes[d]) for d in amendment['datasets']}
    while True:
        choices = {d: grid_choices(results, d, protocol, axes[d])[0] for d in amendment['datasets']}
        todo = next(((d, key, new) for c in amendment['criteria'] for d in amendment['datasets']
                     for key in ('P_mean', 'P_std')
                     for new in [grid_extension(choices[d][c], key, axes[d], step[key])]
                     if new not in (None, 'bound')), None)
        if todo is None:
            break
        d, key, new = todo
        widened = {**axes[d], key: sorted(axes[d][key] + [new])}
        if not obtain(d, widened):
            break
        axes[d] = widened

    summary = {'datasets': {}, 'fingerprints': fingerprints, **state}
    for d in amendment['datasets']:
        choices, rows = grid_choices(results, d, protocol, axes[d])
        summary['datasets'][d] = {'axes': axes[d], 'choices': choices, 'rows': rows,
                                  'runs': len(rows) * len(seeds), 'base': base_choices[d]}
    text = widened_table(summary, amendment, protocol)
    Path(out).mkdir(parents=True, exist_ok=True)
    write_atomically(Path(out) / 'tuning-widened.md', lambda tmp: tmp.write_text(text))
    print(text)
    return summary


def _edge_note(point, axes, step):
    """'interior', or which edges `point` lies on (and whether P_std sits at its > 0 bound)."""
    notes = []
    for key in ('P_mean', 'P_std'):
        new = grid_extension(point, key, axes, step[key])
        if new == 'bound':
            notes.append(f'{key} at its bound ({point[1]}: P_std must stay > 0)')
        elif new is not None:
            notes.append(f'{key} edge')
    return 'interior' if not notes else 'no: ' + ', '.join(notes)


def widened_table(summary, amendment, protocol):
    """The markdown of `widen_grid`'s result: per dataset the best lognormal by reverse KL, by SWD and by mean
    rank on the base grid and on the widened one, each with its point, values and whether it is interior."""
    steps, seeds = protocol['steps'], protocol['tuning_seeds']
    names = {'kl': 'reverse KL', 'swd': 'SWD', 'mean_rank': 'mean rank (KL, SWD)'}
    base_axes = {k: sorted(protocol['tuning'][k]) for k in ('P_mean', 'P_std')}
    lines = ['# Toy lognormal tuning grids, widened where a choice lay on the edge (#34)', '',
             f'Amendment {amendment["path"]} (sha256 {amendment["sha"]}) to {protocol["path"]} (sha256 {protocol["sha"]}); '
             f'tuning seeds {seeds}, {steps} steps a run; final values averaged over the tuning seeds. Rule: a choice '
             f'on the edge of its dataset\'s P_mean × P_std grid adds the next value beyond it (P_mean ± '
             f'{amendment["step"]["P_mean"]}, P_std ± {amendment["step"]["P_std"]}, P_std > 0), every new point '
             f'trained on both seeds; criteria in order {", ".join(amendment["criteria"])}. Runs added: '
             f'{summary["added_runs"]}, {summary["spent_cpu_s"] / 60:.1f} CPU-minutes (their cpu_s; budget '
             f'{amendment["budget_cpu_s"] / 60:.0f}). '
             + (f'Stopped: {summary["stopped"]}.' if summary['stopped'] else 'Every choice that could move is interior.'), '',
             'Cost: runs × steps of the grid that gave the choice (tuning seeds only; the reported seeds are extra).', '',
             '| dataset | best by | grid | P_mean | P_std | reverse KL | SWD | mean rank | interior | tuning cost |',
             '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |']
    for d, entry in summary['datasets'].items():
        for label, (choices, rows), axes in ((f'base {len(base_axes["P_mean"])} × {len(base_axes["P_std"])}', entry['base'],
                                               base_axes),
                                              (f'widened {len(entry["axes"]["P_mean"])} × {len(entry["axes"]["P_std"])}',
                                               (entry['choices'], entry['rows']), entry['axes'])):
            by_point = {(r[0], r[1]): r for r in rows}
            for c in WIDEN_CRITERIA:
                point = choices[c]
                row = by_point[point]
                lines.append(f'| {d} | {names[c]} | {label} | {point[0]} | {point[1]} | {_number(row[2]["kl"])} | '
                             f'{_number(row[2]["swd"])} | {row[3]:.1f} | {_edge_note(point, axes, amendment["step"])} | '
                             f'{len(rows) * len(seeds)} × {steps} |')
    lines += ['', 'Every point of each widened grid (reverse KL / SWD, mean of the tuning seeds):', '']
    for d, entry in summary['datasets'].items():
        by_point = {(r[0], r[1]): r[2] for r in entry['rows']}
        stds = entry['axes']['P_std']
        lines += [f'**{d}**' + (f' (data fingerprints of its runs: {", ".join(sorted(map(str, summary["fingerprints"][d])))}: '
                                'the held-out mixture rebuilt on another CPU, equal but for the last bits of its floats)'
                                if len(summary['fingerprints'].get(d, ())) > 1 else ''), '',
                  '| P_mean \\ P_std | ' + ' | '.join(map(str, stds)) + ' |', '| --- |' + ' --- |' * len(stds)]
        for m in entry['axes']['P_mean']:
            lines.append(f'| {m} | ' + ' | '.join(f'{_number(by_point[m, s]["kl"])} / {_number(by_point[m, s]["swd"])}'
                                                 for s in stds) + ' |')
        lines.append('')
    return '\n'.join(lines) + '\n'


# ------------------------------------------------------------------------------------ the summary

def _number(x, digits=3):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return '–'
    if math.isinf(x):
        return '∞' if x > 0 else '−∞'
    return f'{x:.{digits}g}'


def _mean_se(values):
    """'mean ± SE' over seeds (SE: std with ddof=1 over √n; '–' for one seed)."""
    import numpy as np

    values = np.asarray(values, dtype=np.float64)
    if not np.isfinite(values).all():
        return f'{_number(float(values.mean()))} (a seed non-finite)'
    if len(values) < 2:
        return f'{_number(float(values.mean()))} ± –'
    return f'{_number(float(values.mean()))} ± {_number(float(values.std(ddof=1) / math.sqrt(len(values))), 2)}'


def _interval(m):
    return f'{_number(m.median)} [{_number(m.low)}, {_number(m.high)}]'


def joint_speedup(base_steps, base, var_steps, var, fraction, metrics):
    """Per seed: steps the baseline needs to reach ALL its own values of `metrics` at `fraction` of its budget
    ÷ steps the variant needs to reach all of them (each curve [seeds, evaluations] in `base`/`var`). A curve
    reaches all when the last of its metrics first crosses its target (`reach_step` each, the latest of
    them): for curves that stay below a target once they cross it, the first evaluation at which every
    metric is at or below its target. Not the minimum (or any mix) of per-metric speed-ups (#34; tested)."""
    import numpy as np

    from benchmarks.seed_statistics import reach_step

    base_steps = np.asarray(base_steps, dtype=np.float64)
    column = np.flatnonzero(np.isclose(base_steps, fraction * base_steps[-1]))
    if len(column) == 0:
        raise ValueError(f'no baseline evaluation at {fraction} of the budget')
    ratios = []
    for s in range(len(base[metrics[0]])):
        targets = {m: base[m][s][column[0]] for m in metrics}
        needed = max(reach_step(base_steps, base[m][s], targets[m]) for m in metrics)
        taken = max(reach_step(var_steps, var[m][s], targets[m]) for m in metrics)
        ratios.append(needed / taken)
    return np.array(ratios)


def speedups(results, dataset, variant, baseline, seeds, fractions):
    """{(metric or 'joint', fraction): MedianInterval (median, seed range) or None}: per-seed speed-ups against
    `baseline`."""
    import numpy as np

    from benchmarks.seed_statistics import median_with_seed_range, speedup

    metrics = curve_metrics(dataset)
    curves = lambda v: {m: np.array([results[dataset, v, s][m] for s in seeds]) for m in metrics}
    steps = lambda v: results[dataset, v, seeds[0]]['step']
    base, var = curves(baseline), curves(variant)
    out = {}
    for f in fractions:
        for m in metrics + ['joint']:
            try:
                if m == 'joint':
                    ratios = joint_speedup(steps(baseline), base, steps(variant), var, f, metrics)
                else:
                    ratios = speedup(steps(baseline), base[m], steps(variant), var[m], f)
                out[m, f] = median_with_seed_range(ratios)
            except ValueError:  # no evaluation at that fraction (a short test run)
                out[m, f] = None
    return out


def goal_verdict(joint, datasets, held_out, fractions):
    """The issue's goal for one variant from its joint (KL and SWD) speed-ups {(dataset, fraction): median and
    seed range}: ≥ 1.5× (median) with the range's low end strictly above 1.0 (every seed faster; a seed at
    exactly 1.0 is not) at 100% on the tree and every held-out set, and a median of at least 0.9× on every
    dataset at every speed-up fraction, a median of 0 (never reached) included."""
    strong = [d for d in datasets if d == 'tree' or d in held_out]
    if not strong:
        return 'not assessable (no tree or held-out set in this summary)'
    failures = []
    for d in strong:
        m = joint.get((d, 1.0))
        if m is None or not (m.median >= 1.5 and m.low > 1.0):
            failures.append(f'{d} 100%: {_interval(m) if m else "–"}')
    for d in datasets:
        for f in fractions:
            m = joint.get((d, f))
            if m is not None and m.median < 0.9:
                failures.append(f'{d} {f:.0%}: median {_number(m.median)} < 0.9')
    return 'met' if not failures else 'not met (' + '; '.join(failures) + ')'


def dataset_section(results, dataset, variants, baseline, seeds, protocol, floors, lines, joint):
    """The tables of one dataset, appended to `lines`; its joint speed-ups into `joint[variant][dataset, f]`."""
    import numpy as np

    from benchmarks.seed_statistics import paired_difference, seed_range_coverage

    images = dataset in IMAGES
    metrics = ['fd'] if images else list(TOY_METRICS)
    steps = results[dataset, baseline, seeds[0]]['step']
    fractions = protocol['speedup_fractions']
    at_fraction = {f: steps.index(round(f * steps[-1])) if round(f * steps[-1]) in steps else None for f in fractions}
    lines += [f'### {dataset} — {len(seeds)} seeds ({", ".join(map(str, seeds))}), {steps[-1]} steps, '
              f'baseline {baseline}', '']

    lines += [f'Final values at step {steps[-1]} (mean ± SE over seeds, ddof=1; lower is better'
              + ('' if images else '; floor: the same sampler, noise and scoring with the exact denoiser') + '):', '',
              '| σ distribution | ' + ' | '.join(METRICS[m] for m in metrics) + ' | σ q10/q50/q90 (final) |',
              '| --- |' + ' --- |' * (len(metrics) + 1)]
    if floors is not None:
        chance = floors[0]['occupancy_chance']
        lines.append('| exact denoiser (floor) | ' + ' | '.join(
            _mean_se([f[m] for f in floors]) + (f' (chance {_number(chance, 2)})' if m == 'occupancy_kl' else '')
            for m in metrics) + ' | – |')
    for v in variants:
        q = np.mean([results[dataset, v, s]['sigma_q10_50_90'][-1] for s in seeds], axis=0)
        lines.append(f'| {v} | ' + ' | '.join(_mean_se([results[dataset, v, s][m][-1] for s in seeds]) for m in metrics)
                     + f' | {q[0]:.3f} / {q[1]:.3f} / {q[2]:.2f} |')

    keys = curve_metrics(dataset)
    columns = [(m, f) for m in keys + ['joint'] * (len(keys) > 1) for f in fractions]  # one metric: joint is it
    lines += ['', f'Speed-up against {baseline}: per seed, the steps {baseline} needs to reach its own value at a '
              'fraction of the budget ÷ the steps the variant needs (log-step interpolation; 0: never reached'
              + ('; "joint": all of ' + ', '.join(keys) + ' reached' if len(keys) > 1 else '')
              + f'); median over seeds [seed range: min–max over {len(seeds)} seeds, which covers the true median '
              f'with probability 1 − 2·0.5^{len(seeds)} = {100 * seed_range_coverage(len(seeds)):.4g}%, not 95%]:', '',
              '| σ distribution | ' + ' | '.join(f'{m} {f:.0%}' for m, f in columns) + ' |',
              '| --- |' + ' --- |' * len(columns)]
    for v in variants:
        ups = speedups(results, dataset, v, baseline, seeds, fractions)
        joint.setdefault(v, {}).update({(dataset, f): ups['joint', f] for f in fractions})
        lines.append(f'| {v} | ' + ' | '.join(_interval(ups[c]) if ups[c] else '–' for c in columns) + ' |')

    if len(seeds) >= 2:
        lines += ['', f'Paired differences against {baseline} (variant − baseline, same seed; mean [95% t interval]; '
                  'negative: the variant is lower):', '',
                  '| σ distribution | step | ' + ' | '.join(f'Δ {m}' for m in metrics) + ' |',
                  '| --- | --- |' + ' --- |' * len(metrics)]
        for v in variants:
            if v == baseline:
                continue
            for f, i in at_fraction.items():
                if i is None:
                    continue
                cells = []
                for m in metrics:
                    try:
                        d = paired_difference([results[dataset, v, s][m][i] for s in seeds],
                                              [results[dataset, baseline, s][m][i] for s in seeds])
                        cells.append(f'{_number(d.mean)} [{_number(d.low)}, {_number(d.high)}]')
                    except ValueError:
                        cells.append('–')
                lines.append(f'| {v} | {steps[i]} ({f:.0%}) | ' + ' | '.join(cells) + ' |')

    lines += ['', 'Curves (mean ± SE over seeds at each evaluation step):', '',
              '| σ distribution | metric | ' + ' | '.join(map(str, steps)) + ' |',
              '| --- | --- |' + ' --- |' * len(steps)]
    for v in variants:
        for m in keys:
            values = np.array([results[dataset, v, s][m] for s in seeds])
            lines.append(f'| {v} | {m} | ' + ' | '.join(_mean_se(values[:, i]) for i in range(len(steps))) + ' |')
    lines.append('')


def summarise(results, datasets, variants, seeds_by_dataset, out, protocol=None, variant_specs=None, tuning=None,
              variants_file=VARIANTS_FILE):
    """results.md and curves.png in `out` from `results` {(dataset, variant, seed): run}; `tuning`
    {dataset: `choose_tuned`'s result} for the tuned baseline's table; `variant_specs`: `variants_file` loaded."""
    import numpy as np

    protocol, variant_specs = protocol or load_protocol(), variant_specs or load_variants(variants_file)
    for seeds in seeds_by_dataset.values():
        check_disjoint(seeds, protocol['tuning_seeds'])
    baseline = protocol['baseline'] if protocol['baseline'] in variants else 'lognormal'
    held_out = [d for d in datasets if d in protocol['held_out']]
    development = [d for d in datasets if d not in held_out and d not in IMAGES]
    images = [d for d in datasets if d in IMAGES]
    classifiers = {d: check_one_classifier(results, d) for d in images}

    lines = []
    if protocol.get('label'):
        lines += [f'**{protocol["label"]}**', '']
    lines += [f'protocol {protocol["path"]} (sha256 {protocol["sha"]}); variants {variants_file} '
              f'(sha256 {file_sha(variants_file)}); seeds per dataset: {seeds_by_dataset}; tuning seeds '
              f'{protocol["tuning_seeds"]} (never reported)'
              + ''.join(f'; {d} classifier {c or "not recorded"}' for d, c in classifiers.items()), '']
    if tuning:
        metrics = list(protocol['tuning']['metrics'])
        lines += ['## Tuned lognormal', '',
                  f'Grid P_mean {protocol["tuning"]["P_mean"]} × P_std {protocol["tuning"]["P_std"]}, each trained on the '
                  f'tuning seeds {protocol["tuning_seeds"]}; final values averaged over them, ranked per metric; '
                  'lowest mean rank chosen' + ''.join(f'; the {d} grid scored by classifier {t["classifier"]}'
                                                      for d, t in tuning.items() if t.get('classifier')) + '.', '',
                  '| dataset | P_mean | P_std | ' + ' | '.join(METRICS.get(m, m) for m in metrics) + ' | mean rank | |',
                  '| --- | --- | --- |' + ' --- |' * (len(metrics) + 2)]
        for d in datasets:
            if d not in tuning:
                continue
            for P_mean, P_std, means, rank in tuning[d]['rows']:
                chosen = '**chosen**' if (P_mean, P_std) == (tuning[d]['P_mean'], tuning[d]['P_std']) else ''
                if chosen and (grid_edge(P_mean, 'P_mean', protocol) or grid_edge(P_std, 'P_std', protocol)):
                    chosen += ' (at the edge of the grid: the best setting may lie beyond it)'
                lines.append(f'| {d} | {P_mean} | {P_std} | ' + ' | '.join(_number(means.get(m)) for m in metrics)
                             + f' | {rank:.1f} | {chosen} |')
        lines.append('')

    joint, floors = {}, {}
    for title, group in (('Development sets (explored before this protocol)', development),
                         ('Held-out sets (no variant or setting chosen on them)', held_out), ('Images', images)):
        if not group:
            continue
        lines += [f'## {title}', '']
        for d in group:
            floors[d] = None if d in IMAGES else exact_floors(d, seeds_by_dataset[d], protocol)
            dataset_section(results, d, variants, baseline, seeds_by_dataset[d], protocol, floors[d], lines, joint)

    toy = [d for d in datasets if d not in IMAGES]
    family = [v for v in variants if variant_specs.get(v, {}).get('role') == 'cedm']
    if toy and family and baseline != 'lognormal':
        lines += ['## The goal (reported next to the measurement, not a condition)', '',
                  f'An entropic-family density reaching {baseline}\'s final reverse KL and SWD (joint speed-up) '
                  '≥ 1.5× faster on the tree and on the held-out sets, seed range above 1.0 (every seed faster), and never below 0.9× '
                  '(median, any dataset, any speed-up fraction):', '']
        for v in family:
            lines.append(f'- {v}: {goal_verdict(joint[v], toy, held_out, protocol["speedup_fractions"])}')
        lines.append('')

    text = '\n'.join(lines) + '\n'
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / 'results.md').write_text(text)
    print(text)

    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    num_rows = max(len(curve_metrics(d)) for d in datasets)  # one row when only images are plotted
    fig, axes = plt.subplots(num_rows, len(datasets), figsize=(4.5 * len(datasets), 3.5 * num_rows + 0.7),
                             squeeze=False)
    for column, d in enumerate(datasets):
        rows = curve_metrics(d)
        seeds = seeds_by_dataset[d]
        for row, m in enumerate(rows):
            ax = axes[row, column]
            plotted = []
            for v in variants:
                steps = results[d, v, seeds[0]]['step']
                plotted.append(np.median([results[d, v, s][m] for s in seeds], axis=0))
                ax.plot(steps, plotted[-1], 'o-', label=v, markersize=3)
            if floors.get(d):
                plotted.append([np.median([f[m] for f in floors[d]])])
                ax.axhline(plotted[-1][0], color='k', ls='--', lw=1, label='exact denoiser (floor)')
            ax.set(title=f'{d}{" (held out)" if d in held_out else ""}', xlabel='training steps', xscale='log',
                   ylabel=f'{METRICS[m]}, median over seeds')
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # 2×10², 3×10², ... overlap
            # The k-NN KL can dip below 0 near the floor: then a scale linear around 0.
            low = min(np.min(values) for values in plotted)
            ax.set_yscale('log') if low > 0 else ax.set_yscale('symlog', linthresh=1e-2)
            ax.grid(alpha=0.3)
        for row in range(len(rows), num_rows):
            axes[row, column].axis('off')
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(Path(out) / 'curves.png', dpi=100)
    plt.close(fig)
    return text


# ------------------------------------------------------------------------------------ the command

def cached_results(out, jobs):
    return {job: json.loads(run_path(out, *job).read_text()) for job in jobs}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--protocol', default=PROTOCOL, help=f'the protocol file (default {PROTOCOL})')
    parser.add_argument('--variant-config', default=VARIANTS_FILE, help=f'the variants file (default {VARIANTS_FILE})')
    parser.add_argument('--datasets', nargs='+', choices=list(TOY) + sorted(IMAGES),
                        help="default: the protocol's development and held-out sets")
    parser.add_argument('--variants', nargs='+', help="default: every variant of the variants file not marked default: false")
    parser.add_argument('--seeds', nargs='+', type=int, help="default: the protocol's reported seeds")
    parser.add_argument('--steps', type=int, help="default: the protocol's budget")
    parser.add_argument('--evals', nargs='+', type=int, help="default: the protocol's fractions of --steps")
    parser.add_argument('--workers', type=int, default=os.cpu_count() or 1, help='runs in parallel')
    parser.add_argument('--threads', type=int, help='torch threads per run (default: CPU cores ÷ workers; 1 '
                        'on cores other jobs share: a toy step on 2 busy threads can be 10× slower than on 1)')
    parser.add_argument('--out', default='benchmarks/results/entropic_training_v2',
                        help='cache and summary folder (default: a fresh one; the runs in benchmarks/results/entropic_training predate the protocol)')
    parser.add_argument('--summarise-only', action='store_true', help='summarise the cached runs without training')
    parser.add_argument('--widen-grid', metavar='AMENDMENT', help='widen the toy tuning grids by an amendment such as '
                        'benchmarks/protocol/protocol-v3-grid.yaml: train its runs one at a time into OUT/tuning/ '
                        '(--summarise-only: none) and write OUT/tuning-widened.md')
    args = parser.parse_args(argv)
    if args.widen_grid:
        try:
            return widen_grid(args.widen_grid, args.out, threads=args.threads or 1, train=not args.summarise_only)
        except ValueError as e:
            parser.error(str(e))
    try:
        protocol = load_protocol(args.protocol)
        variant_specs = load_variants(args.variant_config)
    except ValueError as e:
        parser.error(str(e))
    specs = variant_specs
    datasets = args.datasets or protocol['development'] + protocol['held_out']
    variants = args.variants or [v for v, spec in specs.items() if spec['default']]
    unknown = [v for v in variants if v not in specs]
    if unknown:
        parser.error(f'--variants: {unknown} not in {args.variant_config} ({", ".join(specs)})')
    seeds, steps = args.seeds or protocol['seeds'], args.steps or protocol['steps']
    try:
        check_disjoint(seeds, protocol['tuning_seeds'])
        evals = sorted(args.evals) if args.evals else eval_steps(protocol, steps)
    except ValueError as e:
        parser.error(f'--seeds/--steps: {e}')
    if protocol['baseline'] not in variants and 'lognormal' not in variants:
        parser.error(f'--variants must include the baseline {protocol["baseline"]} (or lognormal)')
    if set(datasets) & IMAGES.keys() and any(specs[v]['oracle'] for v in variants):
        parser.error('--variants: the oracle variants need an exact mixture (toy data only)')
    if not args.summarise_only and evals[-1] != steps:
        parser.error(f'--evals: the last evaluation must be the last step ({steps})')
    out = Path(args.out)
    tuned_variants = [v for v in variants if specs[v]['tuned']]
    tuning_jobs = [(d, grid_variant(*p), s) for d in datasets for p in tuning_grid(protocol)
                   for s in protocol['tuning_seeds']] if tuned_variants else []

    if args.summarise_only:  # from the cached runs, over the seeds every dataset and variant has
        missing = [job for job in tuning_jobs if not run_path(out, *job).is_file()]
        if missing:
            parser.error(f'--summarise-only: {len(missing)} tuning runs not cached in {out / "tuning"}, e.g. {missing[0]}')
        tuning_results = cached_results(out, tuning_jobs)
        tuning = {d: choose_tuned(tuning_results, d, protocol) for d in datasets} if tuned_variants else {}
        seeds = {d: [s for s in seeds if all(run_path(out, d, v, s).is_file() for v in variants)] for d in datasets}
        for d in datasets:
            if not seeds[d]:
                parser.error(f'--summarise-only: no seed of {d} has a cached run of every variant in {out / "runs"}')
        results = cached_results(out, [(d, v, s) for d in datasets for s in seeds[d] for v in variants])
        for (d, v, s), result in results.items():  # the tuned runs were trained with today's choice
            expected = run_settings(d, v, s, result.get('settings', {}).get('steps'), protocol, specs, tuning.get(d))
            if result.get('settings') != expected:
                raise SystemExit(f'{run_path(out, d, v, s)}: trained with {result.get("settings")}, '
                                 f'but the protocol and tuning now give {expected}')
        return summarise(results, datasets, variants, seeds, out, protocol, specs, tuning, args.variant_config)

    if set(datasets) & IMAGES.keys():  # once, before the workers would race to train it
        from datasets import build_dataset
        classifier_path(build_dataset(load_dataset_config('mnist', protocol).data), out)
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.workers)
    jobs = [(d, v, s) for s in seeds for d in datasets for v in variants if v not in tuned_variants]
    with ProcessPoolExecutor(args.workers) as pool:
        submit = lambda job, tuned=None, at=evals: pool.submit(run_one, *job, steps, set(at), out, threads, protocol,
                                                               specs, tuned)
        # First, as the tuned runs wait for them; scored at their last step only, all the choice reads.
        tuning_futures = {job: submit(job, at=[steps]) for job in tuning_jobs}
        futures = {job: submit(job) for job in jobs}
        tuning_results = {job: f.result() for job, f in tuning_futures.items()}
        tuning = {d: choose_tuned(tuning_results, d, protocol) for d in datasets} if tuned_variants else {}
        futures.update({(d, v, s): submit((d, v, s), tuning[d]) for s in seeds for d in datasets for v in tuned_variants})
        results = {job: f.result() for job, f in futures.items()}
    return summarise(results, datasets, variants, {d: seeds for d in datasets}, out, protocol, specs, tuning,
                     args.variant_config)


if __name__ == '__main__':
    main()
