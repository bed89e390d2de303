"""Sampling schedules on image models (#21, #37): every image metric (FD and KID in the features of an
independent digit classifier and of a digit autoencoder, background RMS, spectrum distance) against NFE,
per solver, over models from several training seeds, with a grid of samples per point.

    python -m benchmarks.image_sampling --ckpt runs/mnist-fast*/checkpoints/last.ckpt
        [--solvers euler heun dpmpp_2m euler_ancestral] [--schedules karras loglinear ... surrogate]
        [--nfe 6 11 16 35] [--num 1000] [--draws 2] [--profile online|offline] [--out DIR] [--summarise-only]

Every (checkpoint, solver, NFE, schedule, draw) is one row of DIR/rows.jsonl, appended as it finishes,
so the benchmark resumes where it stopped and grows by later calls with other solvers, NFE or
schedules; DIR/results-PROFILE.md and DIR/nfe-PROFILE.png are rebuilt from every row there.

- Samples: class-conditional (guidance 1), one uniformly random class per sample; draw k uses the
  same initial noise, classes and ancestral noise for every schedule and solver (paired). NFE: heun
  takes (NFE + 1) // 2 steps (2·steps − 1 denoiser calls), the other solvers NFE steps. The first
  checkpoint's first 64 samples of draw 0 are kept as DIR/grids/SOLVER-NFE-SCHEDULE.png.
- Schedules: those of `sample.py` (`optimized` and `optimized-entropic` computed once per checkpoint and
  solver, their local errors cached beside the checkpoint, their cost printed), `karras-rhoR` (ρ = R
  instead of 7: the sweep for the best hand-made ρ) and `rescaled-entropic-to-sigma-min`, rescaled
  entropic time as it was before #37 (its last level σ_min, no denoising last step), to compare.
- Metrics (METRICS; `Scorer`): the networks, `evaluation.fidelity.DigitClassifier` and
  `evaluation.digit_features.DigitAutoencoder`, are trained once and kept in DIR beside the rows they
  scored (one retrained on another machine differs in its last bits, and distances in its features do
  not compare); every row names both networks and the model weights it was measured with, and the
  summary refuses rows of two classifiers, two autoencoders or two models under one checkpoint path;
  samples are rounded to 8-bit pixels as PNGs would be. FD and KID (torch-fidelity's: cubic polynomial
  kernel, unbiased MMD² averaged over 10 subsets of 1000, × 1000) against all but the autoencoder's
  1000 held-out real digits (a seeded random split), background RMS and spectrum distance
  (`evaluation.pixel_stats`) against the same; the floor is the 1000 held-out digits scored the same way.
- Profiles: `online` reads each checkpoint's training-time profile; `offline` re-estimates it with
  the sampling (class-conditional) denoiser on the data's digits (64 σ × 256 samples, seed 0). The
  offline summary ends with the two compared wherever both were measured: steps moved, FD ratio per model.
- Statistics: per checkpoint the mean over draws; across checkpoints (training seeds) the mean with
  a Student-t 95% interval, and each schedule's difference from karras ρ = 7 paired by checkpoint
  (`benchmarks.seed_statistics.paired_difference`). A schedule is better (worse) than karras at a
  point by one metric only where that whole interval lies below (above) zero; the summary's verdict
  says better (worse) only where every metric says so, tie where none does, disputed otherwise.
"""

import argparse
import json
import math
from pathlib import Path

import numpy as np
import scipy.stats
import torch
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_kid import kid_features_to_metric

import sampling
from benchmarks.seed_statistics import paired_difference
from datasets.images import to_data
from entropy import EntropyProfile
from entropy.profile import PROFILE_SCHEDULES
from evaluation.plots import image_grid, save_image, to_uint8
from evaluation.digit_features import cached_autoencoder, held_out_split, load_autoencoder
from evaluation.fidelity import DigitClassifier, cached_classifier, weights_fingerprint
from evaluation.pixel_stats import PixelReference
from sampling_model import load_model

SCHEDULES = ('karras', 'karras-rho3', 'karras-rho5', 'karras-rho12', 'loglinear', 'vp', 'entropic', 'rescaled-entropic',
             'structure', 'rescaled-structure', 'surrogate', 'optimized', 'optimized-entropic',
             'rescaled-entropic-to-sigma-min')
# karras with another ρ than EDM's 7: the sweep from which the best hand-made ρ is picked (#35).
KARRAS_RHO = {'karras-rho3': 3.0, 'karras-rho5': 5.0, 'karras-rho12': 12.0}
# Profile schedules as they were before #37 (`EntropyProfile.sigmas(final_denoise=False)`: the last level
# sigma_min, no denoising last step), for comparison: the schedule each was.
TO_SIGMA_MIN = {'rescaled-entropic-to-sigma-min': 'rescaled-entropic'}
SOLVERS = ('euler', 'heun', 'dpmpp_2m', 'euler_ancestral')
BASELINE = 'karras'
BATCH = 100  # on one CPU thread the UNet runs 1.8x faster per image in batches of 100 than of 500 (cache)
OFFLINE_POINTS, OFFLINE_SAMPLES = 64, 256  # the offline profile: σ points and samples at each
KID_SUBSETS = 10  # KID: mean over random subsets of at most 1000 samples and 1000 reference digits
FIXED = ('karras', 'loglinear', 'vp', 'optimized', *KARRAS_RHO)  # schedules that read no profile: one row serves both
FEATURES = {'classifier': '', 'autoencoder': 'ae_'}  # feature space: the prefix of its rows' fd and kid
# Every metric of a row, lower is closer to real digits: FD, KID × 1000 in each feature space; background RMS
# in 8-bit levels; spectrum distance as RMS log10 power ratio (evaluation/pixel_stats.py).
METRICS = {'fd': 'classifier FD', 'kid': 'classifier KID', 'ae_fd': 'autoencoder FD', 'ae_kid': 'autoencoder KID',
           'background': 'background RMS', 'spectrum': 'spectrum distance'}
GRID = 64  # images in the grid kept per (solver, NFE, schedule): the first checkpoint's draw 0


def steps_for(solver, nfe):
    """(steps, actual NFE) for about `nfe` denoiser calls."""
    if solver == 'heun':
        steps = max((nfe + 1) // 2, 2)
        return steps, 2 * steps - 1
    return max(nfe, 2), max(nfe, 2)


class Scorer:
    """Every metric (METRICS) of images [n, 1, H, W] in [−1, 1] against the reference digits of `data`:
    FD and KID (torch-fidelity's) in the features of the digit classifier and of the digit autoencoder
    kept in `folder` (each trained there once), background RMS and spectrum distance
    (`evaluation.pixel_stats`). The reference: every digit but the autoencoder's held-out ones, which,
    scored like samples, give each metric's floor."""

    def __init__(self, data, folder):
        path, _ = cached_classifier(data, folder)
        weights = torch.load(path, map_location='cpu', weights_only=True)['state_dict']
        self.fingerprint = weights_fingerprint(weights)
        self.classifier = DigitClassifier(data.num_classes)
        self.classifier.load_state_dict(weights)
        self.classifier.eval()
        self.autoencoder = load_autoencoder(cached_autoencoder(data, folder)[0])
        self.autoencoder_fingerprint = weights_fingerprint(self.autoencoder.state_dict())
        held_out, reference = held_out_split(len(data))
        self.pixels = PixelReference(data.images.cpu()[reference])
        real = to_data(data.images.cpu())
        self.reference = {name: self.features(name, real[reference]) for name in FEATURES}
        self.statistics = {name: fid_features_to_statistics(f) for name, f in self.reference.items()}
        self.floor = self.score(real[held_out])

    @torch.no_grad()
    def features(self, name, images):
        network = self.classifier if name == 'classifier' else self.autoencoder
        pixels = to_data(to_uint8(images))  # as written to 8-bit PNGs
        return torch.cat([network.features(chunk) for chunk in pixels.split(BATCH)]).double()

    def score(self, images):
        scores = self.pixels.score(to_uint8(images))
        for name, prefix in FEATURES.items():
            features = self.features(name, images)
            fd = fid_statistics_to_metric(fid_features_to_statistics(features), self.statistics[name], verbose=False)
            kid = kid_features_to_metric(features, self.reference[name], kid_subsets=KID_SUBSETS,
                                         kid_subset_size=min(len(features), 1000), verbose=False)
            scores[prefix + 'fd'] = fd['frechet_inception_distance']
            scores[prefix + 'kid'] = 1000 * kid['kernel_inception_distance_mean']
        return scores


def offline_profile(model, seed=0):
    """The profile of the class-conditional sampling denoiser, measured on the data's digits with their
    own labels (OFFLINE_POINTS σ × OFFLINE_SAMPLES samples)."""
    generator = torch.Generator().manual_seed(seed)
    labels = {}

    def draw(n):
        x, labels['one_hot'] = model.dataset.sample(n, generator=generator, labels=True)
        return x

    def denoiser(x, sigma):  # called right after `draw` on the same batch (EntropyProfile.from_denoiser)
        return model.denoiser(x, sigma, labels['one_hot'])

    noise = model.config.noise
    return EntropyProfile.from_denoiser(denoiser, draw, noise.sigma_min, noise.sigma_max, num_points=OFFLINE_POINTS,
                                        samples_per_point=OFFLINE_SAMPLES, generator=generator,
                                        spectrum=model.profile.spectrum, batch_size=BATCH, min_count=1)


def schedule_sigmas(model, steps, schedule, solver):
    """The model's σ discretisation `schedule`, or one of TO_SIGMA_MIN."""
    if schedule in TO_SIGMA_MIN:
        s = model.config.sample
        return model.profile.sigmas(steps, PROFILE_SCHEDULES[TO_SIGMA_MIN[schedule]], s.sigma_min, s.sigma_max,
                                    final_denoise=False)
    if schedule in KARRAS_RHO:
        return model.sigmas(steps, 'karras', rho=KARRAS_RHO[schedule])
    return model.sigmas(steps, schedule, solver=solver)


def generate(model, solver, sigmas, num, draw):
    """`num` class-conditional samples of draw `draw` in pixel units [−1, 1] (whatever `data.scale`):
    the same noise, classes and ancestral noise for every schedule."""
    noise = torch.randn(num, *model.shape, generator=torch.Generator().manual_seed(1000 + draw))
    classes = torch.randint(model.num_classes, (num,), generator=torch.Generator().manual_seed(2000 + draw))
    generator = torch.Generator().manual_seed(3000 + draw)
    out = []
    for chunk, label in zip(noise.split(BATCH), classes.split(BATCH)):
        denoiser = model.sampling_denoiser(True, label, 1.0, len(label))
        out.append(sampling.sample(denoiser, chunk, sigmas, solver, generator=generator))
    return torch.cat(out) / model.config.data.scale  # in the [−1, 1] of the classifier


def run(args, out):
    rows_file = out / 'rows.jsonl'
    rows = [json.loads(line) for line in rows_file.read_text().splitlines()] if rows_file.exists() else []
    done = {(r['ckpt'], r.get('model'), r['profile'], r['solver'], r['nfe'], r['schedule'], r['draw'], r['num'])
            for r in rows}
    scorers = {}
    for ckpt in args.ckpt:
        model = load_model(ckpt, device='cpu')
        model.denoiser.requires_grad_(False)
        weights = weights_fingerprint(model.denoiser.state_dict())  # a retrained model under the same path is another
        data = model.dataset
        if data.name not in scorers:
            scorers[data.name] = Scorer(data, out)
        scorer = scorers[data.name]
        features = {'classifier': scorer.fingerprint, 'autoencoder': scorer.autoencoder_fingerprint}
        check_rows(rows + [{'ckpt': ckpt, 'model': weights, **features}])  # before any work
        if args.profile == 'offline':
            model.profile = offline_profile(model)
        for solver in args.solvers:
            for requested in args.nfe:
                steps, nfe = steps_for(solver, requested)
                for schedule in args.schedules:
                    sigmas, profile = None, 'none' if schedule in FIXED else args.profile
                    for draw in range(args.draws):
                        key = (ckpt, weights, profile, solver, nfe, schedule, draw, args.num)
                        if key in done:
                            continue
                        if sigmas is None:
                            sigmas = schedule_sigmas(model, steps, schedule, solver)
                        images = generate(model, solver, sigmas, args.num, draw)
                        grid = out / 'grids' / f'{solver}-{nfe}-{schedule}.png'
                        if ckpt == args.ckpt[0] and draw == 0 and not grid.exists():
                            save_image(image_grid(images[:GRID]), grid)
                        row = {'ckpt': ckpt, 'seed': model.config.seed, 'profile': profile, 'solver': solver,
                               'nfe': nfe, 'steps': steps, 'schedule': schedule, 'draw': draw, 'num': args.num,
                               'data': data.name, 'model': weights, **features, 'floor': scorer.floor,
                               'sigmas': [round(s, 5) for s in sigmas.tolist()], **scorer.score(images)}
                        with rows_file.open('a') as f:
                            f.write(json.dumps(row) + '\n')
                        done.add(key)
                        print(f"{Path(ckpt).parent.parent.name} {solver} NFE {nfe} {schedule} draw {draw}: "
                              f"FD {row['fd']:.2f} autoencoder FD {row['ae_fd']:.2f} background {row['background']:.2f}", flush=True)


# --------------------------------------------------------------------------------------------------
# Summary.

def by_draw(rows, profile, metric):
    """{(solver, nfe, schedule): {ckpt: {draw: `metric`}}} of the rows measured with `profile` (or none)."""
    grouped = {}
    for r in rows:
        if r['profile'] in (profile, 'none') and metric in r:  # rows from before a metric lack it
            point = grouped.setdefault((r['solver'], r['nfe'], r['schedule']), {})
            point.setdefault(r['ckpt'], {})[r['draw']] = r[metric]
    return grouped


def cells(rows, profile, metric):
    """{(solver, nfe, schedule): {ckpt: mean of `metric` over draws}}, a checkpoint counting at a point
    only once it has every draw that the rows hold (draws differ systematically: a half-drawn point
    would shift its mean)."""
    all_draws = {r['draw'] for r in rows}
    table = {key: {ckpt: float(np.mean(list(draws.values()))) for ckpt, draws in per_ckpt.items()
                   if set(draws) == all_draws}
             for key, per_ckpt in by_draw(rows, profile, metric).items()}
    return {key: per_ckpt for key, per_ckpt in table.items() if per_ckpt}


def interval(values, level=0.95):
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return float(values.mean()), math.nan, math.nan
    half = scipy.stats.t.ppf((1 + level) / 2, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return float(values.mean()), float(values.mean() - half), float(values.mean() + half)


def comparison(table, solver, nfe, schedule, baseline=BASELINE):
    """The paired difference from `baseline` over the checkpoints both have, or None."""
    mine, base = table.get((solver, nfe, schedule), {}), table.get((solver, nfe, baseline), {})
    common = sorted(set(mine) & set(base))
    if schedule == baseline or len(common) < 2:
        return None
    return paired_difference([mine[c] for c in common], [base[c] for c in common])


def check_rows(rows):
    """SystemExit unless `rows` were scored by one classifier and one autoencoder and each checkpoint path
    holds one model (rows from before these were recorded count as one unknown network)."""
    for network in FEATURES:
        fingerprints = {r.get(network) for r in rows}
        if len(fingerprints) > 1:
            raise SystemExit(f'rows scored by different {network}s ({", ".join(sorted(map(str, fingerprints)))}): '
                             'their distances do not compare; put new rows in another --out')
    for ckpt in {r['ckpt'] for r in rows}:
        models = {r.get('model') for r in rows if r['ckpt'] == ckpt}
        if len(models) > 1:
            raise SystemExit(f'{ckpt}: rows of different model weights ({", ".join(sorted(map(str, models)))}) '
                             'under one checkpoint path: the model was retrained; put its rows in another --out')


def verdict(differences):
    """'better' (every paired interval below 0), 'worse' (every one above), 'tie' (none beyond 0) or
    'disputed' (the metrics disagree) for {metric: PairedDifference}."""
    signs = {-1 if d.high < 0 else 1 if d.low > 0 else 0 for d in differences.values()}
    return {frozenset({-1}): 'better', frozenset({1}): 'worse', frozenset({0}): 'tie'}.get(frozenset(signs), 'disputed')


def verdicts(tables, schedules):
    """Markdown: the verdict against karras ρ = 7 (`verdict`) per (solver, NFE) row and schedule column, with
    how many metrics call it better and worse."""
    others = [s for s in schedules if s != BASELINE]
    lines = ['| solver | NFE | ' + ' | '.join(others) + ' |', '| --- | --- |' + ' --- |' * len(others)]
    for solver, nfe in sorted({k[:2] for k in tables['fd']}, key=lambda k: (SOLVERS.index(k[0]), k[1])):
        cells = []
        for schedule in others:
            differences = {m: comparison(table, solver, nfe, schedule) for m, table in tables.items()}
            if any(d is None for d in differences.values()):
                cells.append('')
                continue
            better, worse = (sum(test(d) for d in differences.values()) for test in (lambda d: d.high < 0, lambda d: d.low > 0))
            cells.append(f'{verdict(differences)} ({better} better, {worse} worse)')
        lines.append(f'| {solver} | {nfe} | ' + ' | '.join(cells) + ' |')
    return lines


def agreement(tables, baseline, schedules):
    """Markdown rows, per (solver, NFE, schedule in `schedules`): each metric's difference from `baseline`
    paired by checkpoint (mean [t interval]; **bold** below 0, _italic_ above), the verdict and the grid."""
    metrics = list(tables)
    lines = ['| solver | NFE | schedule | ' + ' | '.join(METRICS[m] for m in metrics) + ' | verdict | grid |',
             '| --- | --- | --- |' + ' --- |' * (len(metrics) + 2)]
    points = sorted({k for table in tables.values() for k in table if k[2] in schedules},
                    key=lambda k: (SOLVERS.index(k[0]), k[1], SCHEDULES.index(k[2])))
    for solver, nfe, schedule in points:
        differences = {m: comparison(tables[m], solver, nfe, schedule, baseline) for m in metrics}
        if any(d is None for d in differences.values()):
            continue
        texts = [f'{d.mean:+.3g} [{d.low:+.3g}, {d.high:+.3g}]' for d in differences.values()]
        texts = [f'**{t}**' if d.high < 0 else f'_{t}_' if d.low > 0 else t for t, d in zip(texts, differences.values())]
        grids = ' '.join(f'[{name}](grids/{solver}-{nfe}-{name}.png)' for name in (schedule, baseline))
        lines.append(f'| {solver} | {nfe} | {schedule} | ' + ' | '.join(texts) + f' | {verdict(differences)} | {grids} |')
    return lines


# #35's table: hand-made schedules (the best ρ is picked among them per point, by mean classifier FD on these
# very samples: an optimistic baseline), free profile schedules (no network call) and optimised ones.
HAND_MADE = ('karras', 'karras-rho3', 'karras-rho5', 'karras-rho12', 'loglinear')
FREE = ('rescaled-entropic', 'surrogate')
OPTIMIZED = ('optimized', 'optimized-entropic')
# One-off network evaluations per schedule, in image-NFE (sampling/optimized.py's defaults: 128 teacher
# trajectories of 157 NFE; Heun also 780 per trajectory for its corrector on every pair of nodes).
OPTIMIZER_COST = {'heun': 128 * (157 + 780), 'euler': 128 * 157, 'dpmpp_2m': 128 * 157}


def ratio_interval(mine, other):
    """Mean over models of mine/other (per model), with its Student-t 95% interval: (mean, low, high)."""
    common = sorted(set(mine) & set(other))
    return interval([mine[c] / other[c] for c in common])


def which_schedule(tables, floor):
    """Markdown: #35's table per solver and NFE (classifier FD, mean over models), the best of each family,
    and the ratio best free / best optimised per model with its t interval; the goal's verdict per point."""
    fd, kid = tables['fd'], tables.get('kid', {})
    points = sorted({k[:2] for k in fd if k[2] in OPTIMIZED}, key=lambda k: (SOLVERS.index(k[0]), k[1]))
    if not points:
        return []
    mean = lambda table, key: float(np.mean(list(table[key].values())))
    lines = ['### Which schedule (#35): hand-made, free from the profile, optimised for the model', '',
             f'Classifier FD, mean over models (real digits: {floor:.3g}). Best ρ: the hand-made schedule (ρ = 3, 5, 7, 12, '
             'log-linear) with the least mean FD at that point, picked on these samples (favours it). Ratio: '
             'per model, the FD of the best free schedule over that of the best optimised one (each picked by mean FD at the point), mean '
             '[t 95% over models]; KID ratio alike. Goal: ratio ≤ 1.05.', '',
             '| solver | NFE | ρ = 7 | best ρ | rescaled-entropic | surrogate | optimized | optimized-entropic | '
             'best free / best optimised: FD | KID | within 5% |',
             '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |']
    for solver, nfe in points:
        have = {name for (s, n, name) in fd if (s, n) == (solver, nfe)}
        hand = [h for h in HAND_MADE if h in have]
        best_hand = min(hand, key=lambda h: mean(fd, (solver, nfe, h))) if hand else None
        free = [f for f in FREE if f in have]
        optimised = [o for o in OPTIMIZED if o in have]
        cell = lambda name: f'{mean(fd, (solver, nfe, name)):.3g}' if name in have else ''
        ratio_text, kid_text, verdict_text = '', '', ''
        if free and optimised:
            best_free = min(free, key=lambda f: mean(fd, (solver, nfe, f)))
            best_opt = min(optimised, key=lambda o: mean(fd, (solver, nfe, o)))
            r, lo, hi = ratio_interval(fd[solver, nfe, best_free], fd[solver, nfe, best_opt])
            ratio_text = f'{r:.2f} [{lo:.2f}, {hi:.2f}] ({best_free} / {best_opt})'
            if (solver, nfe, best_free) in kid and (solver, nfe, best_opt) in kid:
                k, klo, khi = ratio_interval(kid[solver, nfe, best_free], kid[solver, nfe, best_opt])
                kid_text = f'{k:.2f} [{klo:.2f}, {khi:.2f}]'
            verdict_text = 'yes' if r <= 1.05 else 'no'
        best_rho = f'{cell(best_hand)} ({best_hand})' if best_hand else ''
        lines.append(f'| {solver} | {nfe} | {cell("karras")} | {best_rho} | {cell("rescaled-entropic")} | {cell("surrogate")} '
                     f'| {cell("optimized")} | {cell("optimized-entropic")} | {ratio_text} | {kid_text} | {verdict_text} |')
    costs = ', '.join(f'{solver} {cost:,}' for solver, cost in OPTIMIZER_COST.items())
    return lines + ['', f'One-off cost in image-NFE per model: hand-made and free schedules 0 (the best ρ: a sweep of '
                    f'{len(HAND_MADE)} schedules × the samples scored); optimised (both, the same local errors): {costs}.', '']


def summary(rows, profile):
    check_rows(rows)
    lines = []
    ckpts = sorted({r['ckpt'] for r in rows})
    draws = sorted({r['draw'] for r in rows})
    nums = sorted({r['num'] for r in rows})
    metrics = [m for m in METRICS if all(m in r['floor'] for r in rows)]
    floor = ', '.join(f'{METRICS[m]} {np.mean([r["floor"][m] for r in rows]):.3g}' for m in metrics)
    lines += [f'Models: {len(ckpts)} checkpoints ({", ".join(ckpts)}); {len(draws)} noise draws of '
              f'{"/".join(map(str, nums))} samples per point and checkpoint; profile: {profile}.',
              f'Floor (1000 held-out real digits scored like samples): {floor}.',
              'Cells: mean over checkpoints [Student-t 95% interval over checkpoints] of the per-checkpoint mean '
              'over draws. Marks: **bold** better than karras ρ = 7 (the paired interval of the difference '
              'entirely below 0), _italic_ worse (entirely above 0); unmarked: not distinguishable.', '']
    tables = {metric: cells(rows, profile, metric) for metric in metrics}
    schedules = [s for s in SCHEDULES if any(k[2] == s for k in tables[metrics[0]])]
    lines += which_schedule(tables, float(np.mean([r['floor']['fd'] for r in rows])))
    if len(metrics) > 2:  # more than the classifier's: do the metrics agree?
        lines += ['### Verdicts against karras ρ = 7 (every metric below: better; above: worse; none beyond 0: tie)', '']
        lines += verdicts(tables, schedules) + ['']
        lines += ['### Do the metrics agree? Differences from karras ρ = 7', '',
                  'Per point, each metric\'s difference from karras paired by checkpoint, mean [t 95% interval '
                  'over checkpoints]; verdict: better / worse where every metric\'s interval lies below / above 0, '
                  'tie where none does, disputed otherwise. Grids: the first checkpoint\'s first 64 samples of draw 0.',
                  ''] + agreement(tables, BASELINE, schedules) + ['']
        for before, schedule in TO_SIGMA_MIN.items():
            if schedule in schedules and before in schedules:
                lines += [f'### {schedule} (#37: a denoising last step) against {before} (before #37)', '']
                lines += agreement(tables, before, [schedule]) + ['']
    for metric in metrics:
        table = tables[metric]
        for solver in SOLVERS:
            nfes = sorted({k[1] for k in table if k[0] == solver})
            if not nfes:
                continue
            lines += [f'### {solver}: {METRICS[metric]}', '', '| NFE | ' + ' | '.join(schedules) + ' |',
                      '| --- |' + ' --- |' * len(schedules)]
            for nfe in nfes:
                row = []
                for schedule in schedules:
                    values = table.get((solver, nfe, schedule))
                    if not values:
                        row.append('')
                        continue
                    mean, low, high = interval(list(values.values()))
                    text = f'{mean:.3g} [{low:.3g}, {high:.3g}]' if len(values) > 1 else f'{mean:.3g} (1 model)'
                    diff = comparison(table, solver, nfe, schedule)
                    if diff is not None and diff.high < 0:
                        text = f'**{text}**'
                    elif diff is not None and diff.low > 0:
                        text = f'_{text}_'
                    row.append(text)
                lines.append(f'| {nfe} | ' + ' | '.join(row) + ' |')
            lines.append('')
    if profile == 'offline':
        lines += profile_comparison(rows)
    return '\n'.join(lines)


def profile_comparison(rows):
    """Offline against online profiles, at every point that both measured: how far the re-measured profile
    moves the steps (median over interior steps and models of |ln σ_offline/σ_online|, as a percentage) and
    FD offline/online (per model, then the mean over models with its t interval); and, for scale, the
    spread between two noise draws (median over those points, both profiles, of |draw 0 − draw 1| / their mean)."""
    online, offline = cells(rows, 'online', 'fd'), cells(rows, 'offline', 'fd')
    sigmas = {(r['profile'], r['ckpt'], r['solver'], r['nfe'], r['schedule']): np.array(r['sigmas']) for r in rows}
    lines = ['### Offline against online profiles', '',
             '| solver | NFE | schedule | steps moved in σ | FD offline / online |', '| --- | --- | --- | --- | --- |']
    moves, ratios, compared = [], [], set()
    for solver, nfe, schedule in sorted(k for k in offline if k[2] not in FIXED and k in online):
        common = sorted(set(offline[solver, nfe, schedule]) & set(online[solver, nfe, schedule]))
        if not common:
            continue
        # Interior steps only: σ_max, σ_min and the final 0 are the same under both profiles.
        shift = np.median([np.abs(np.log(sigmas['offline', c, solver, nfe, schedule][1:-2] /
                                         sigmas['online', c, solver, nfe, schedule][1:-2])) for c in common])
        ratio = [offline[solver, nfe, schedule][c] / online[solver, nfe, schedule][c] for c in common]
        moves.append(shift)
        ratios.extend(ratio)
        compared.add((solver, nfe, schedule))
        mean, low, high = interval(ratio)
        bounds = f' [{low:.2f}, {high:.2f}]' if len(common) > 1 else f' ({len(common)} model)'
        lines.append(f'| {solver} | {nfe} | {schedule} | {100 * (math.exp(shift) - 1):.0f}% | {mean:.2f}{bounds} |')
    if not moves:
        return []
    pairs = [draws for profile in ('online', 'offline') for key, per_ckpt in by_draw(rows, profile, 'fd').items()
             if key in compared for draws in per_ckpt.values() if {0, 1} <= set(draws)]
    noise = np.median([abs(d[0] - d[1]) / ((d[0] + d[1]) / 2) for d in pairs]) if pairs else math.nan
    moved = 100 * (math.exp(np.median(moves)) - 1)
    return lines + ['', f'Median over these {len(moves)} points: steps moved {moved:.0f}% in σ; FD offline / online '
                    f'per model from {min(ratios):.2f} to {max(ratios):.2f}. Spread between two noise draws at '
                    f'these points (median, both profiles): {100 * noise:.0f}%.']


def plot(rows, profile, path):
    """FD against NFE per solver: the mean over checkpoints, bars from the best to the worst checkpoint
    (a t interval over 3 models reaches below zero, which a log axis cannot show)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    table = cells(rows, profile, 'fd')
    solvers = [s for s in SOLVERS if any(k[0] == s for k in table)]
    fig, axes = plt.subplots(1, len(solvers), figsize=(4.5 * len(solvers), 3.8), squeeze=False)
    for ax, solver in zip(axes[0], solvers):
        all_nfes = set()
        for schedule in SCHEDULES:
            nfes = sorted(k[1] for k in table if k[0] == solver and k[2] == schedule)
            if not nfes:
                continue
            all_nfes.update(nfes)
            values = [np.array(list(table[(solver, nfe, schedule)].values())) for nfe in nfes]
            mean = np.array([v.mean() for v in values])
            err = np.array([[m - v.min(), v.max() - m] for m, v in zip(mean, values)]).T
            ax.errorbar(nfes, mean, yerr=err, fmt='o-', markersize=3, capsize=2, label=schedule,
                        color=f'C{SCHEDULES.index(schedule)}')  # one colour per schedule in every panel
        ax.axhline(np.mean([r['floor']['fd'] for r in rows]), color='grey', linestyle=':', label='real digits')
        ax.set(xscale='log', yscale='log', title=solver, xlabel='NFE', ylabel='classifier FD')
        ax.set_xticks(sorted(all_nfes), [str(n) for n in sorted(all_nfes)])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f'mean over the models measured at each point (up to {len({r["ckpt"] for r in rows})}), '
                 'bars from the best to the worst', fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--ckpt', nargs='+', default=[])
    parser.add_argument('--solvers', nargs='+', default=list(SOLVERS), choices=SOLVERS)
    parser.add_argument('--schedules', nargs='+', default=list(SCHEDULES), choices=SCHEDULES)
    parser.add_argument('--nfe', nargs='+', type=int, default=[6, 11, 16, 35])
    parser.add_argument('--num', type=int, default=1000, help='samples per draw (default 1000)')
    parser.add_argument('--draws', type=int, default=2, help='noise draws per point and checkpoint (default 2)')
    parser.add_argument('--profile', choices=('online', 'offline'), default='online')
    parser.add_argument('--out', default='benchmarks/results/image_sampling')
    parser.add_argument('--summarise-only', action='store_true')
    parser.add_argument('--threads', type=int, default=None, help='torch threads (default: torch\'s)')
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.summarise_only:
        run(args, out)
    rows = [json.loads(line) for line in (out / 'rows.jsonl').read_text().splitlines()]
    text = summary(rows, args.profile)
    (out / f'results-{args.profile}.md').write_text(text + '\n')
    plot(rows, args.profile, out / f'nfe-{args.profile}.png')
    print(text)


if __name__ == '__main__':
    main()
