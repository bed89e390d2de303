"""Statistics of training curves over seeds: when a curve reaches a quality, how much sooner one σ
distribution gets there than another, seed by seed, and intervals honest about a handful of seeds.

Plain numpy/scipy functions. Steps are optimizer steps (> 0, increasing); metric values are lower is
better (KL in nats, Fréchet distance, ...). A curve that never reaches a value reaches it at step
`math.inf`, which keeps the arithmetic meaningful: a speed-up over a variant that never gets there is
0, and inf ranks above every measured step in a median.
"""

import math
from typing import NamedTuple

import numpy as np
import scipy.stats


def reach_step(steps, values, target):
    """The first step at which a curve, evaluated at `steps`, reaches `target` (value ≤ target).

    Between the last evaluation above target and the first at or below it the crossing is
    interpolated linearly in log(step): evaluations are spaced geometrically and quality improves
    roughly with log steps, so a crossing halfway in value between 1000 and 4000 steps is at 2000,
    not 2500. An infinite value before the crossing puts it at the evaluation itself (the limit of
    that interpolation). A first evaluation already at or below target returns its own step: nothing
    is known before it, and nothing is extrapolated. math.inf when the curve never reaches target.
    NaN values are refused: a failed evaluation is not a value above target.
    """
    steps, values = np.asarray(steps, dtype=np.float64), np.asarray(values, dtype=np.float64)
    if steps.ndim != 1 or steps.shape != values.shape or not (steps > 0).all() or not (np.diff(steps) > 0).all():
        raise ValueError('reach_step: steps must be positive and increasing, one per value')
    if np.isnan(values).any():
        raise ValueError('reach_step: NaN in values')
    reached = np.flatnonzero(values <= target)
    if len(reached) == 0:
        return math.inf
    i = reached[0]
    if i == 0:
        return float(steps[0])
    before, after = values[i - 1], values[i]
    t = 1.0 if math.isinf(before) else (before - target) / (before - after)
    return float(steps[i - 1] * (steps[i] / steps[i - 1]) ** t)


def speedup(baseline_steps, baseline_values, variant_steps, variant_values, fraction):
    """Per seed, steps the baseline needs to reach its own value at `fraction` of its budget ÷ steps
    the variant needs to reach that same value (> 1: the variant is faster; 0: it never gets there).

    Values are [seeds, evaluations], row s of both curves from seed s (paired), or one seed's
    [evaluations]; steps [evaluations] are each curve's evaluation steps, shared by its seeds. The
    budget is the baseline's last evaluation step, and fraction × budget must be one of its
    evaluations (the benchmark evaluates at 25%, 50% and 100%). The numerator is the baseline's own
    reach_step, not fraction × budget: a curve that got as low earlier had already paid only that much.
    Returns the [seeds] speed-ups: each seed's ratio, never a ratio of curves averaged over seeds.
    """
    baseline_steps = np.asarray(baseline_steps, dtype=np.float64)
    baseline_values, variant_values = np.atleast_2d(baseline_values), np.atleast_2d(variant_values)
    if len(baseline_values) != len(variant_values):
        raise ValueError(f'speedup: {len(baseline_values)} baseline seeds, {len(variant_values)} variant seeds')
    at_fraction = np.flatnonzero(np.isclose(baseline_steps, fraction * baseline_steps[-1]))
    if len(at_fraction) == 0:
        raise ValueError(f'speedup: no baseline evaluation at {fraction} × {baseline_steps[-1]:g} steps')
    targets = baseline_values[:, at_fraction[0]]
    return np.array([reach_step(baseline_steps, b, target) / reach_step(variant_steps, v, target)
                     for b, v, target in zip(baseline_values, variant_values, targets)])


class MedianInterval(NamedTuple):
    median: float
    low: float
    high: float


def median_with_bootstrap_ci(values, level=0.95, num_resamples=10000, seed=0):
    """The median over seeds and its percentile-bootstrap interval.

    The seeds are resampled with replacement `num_resamples` times (numpy's generator seeded with
    `seed`: the same interval on every call), and the interval runs from the (1 − level)/2 to the
    (1 + level)/2 quantile of the resampled medians, each end one of those medians (quantile methods
    'lower' and 'higher': no interpolation, which could only blur an end between two possible medians).
    With few seeds it is coarse and says so: the median of n resampled values (n odd) is one of the n
    values, so with 3 seeds a 95% interval is [min, max].

    inf (a step never reached) ranks above every number: a median, or an end, is inf exactly when
    the middle of the (resampled) seeds is, i.e. when at least half of them never got there (for an
    even count the mean of the middle pair is inf when either is). NaN and −inf are refused.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or len(values) == 0 or not (values > -np.inf).all():
        raise ValueError('median_with_bootstrap_ci: need a non-empty 1-D array of numbers or +inf')
    resamples = values[np.random.default_rng(seed).integers(0, len(values), (num_resamples, len(values)))]
    medians = np.median(resamples, axis=1)
    low = np.quantile(medians, (1 - level) / 2, method='lower')
    high = np.quantile(medians, (1 + level) / 2, method='higher')
    return MedianInterval(float(np.median(values)), float(low), float(high))


class PairedDifference(NamedTuple):
    differences: np.ndarray  # [seeds] a − b
    mean: float
    standard_error: float    # std (ddof=1) / √seeds
    low: float               # mean ∓ t_{(1+level)/2, seeds−1} · standard_error
    high: float


def paired_difference(a, b, level=0.95):
    """a − b seed by seed (element s of both from seed s), their mean, its standard error (ddof=1:
    the seeds are a sample of seeds) and the Student-t interval with seeds − 1 degrees of freedom,
    which assumes the differences roughly normal; pairing removes what the seed does to both."""
    differences = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if differences.ndim != 1 or len(differences) < 2:
        raise ValueError('paired_difference: need two 1-D arrays of at least 2 seeds each')
    mean = float(differences.mean())
    standard_error = float(differences.std(ddof=1) / math.sqrt(len(differences)))
    half_width = scipy.stats.t.ppf((1 + level) / 2, len(differences) - 1) * standard_error
    return PairedDifference(differences, mean, standard_error, mean - half_width, mean + half_width)
