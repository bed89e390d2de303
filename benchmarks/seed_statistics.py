"""Statistics of training curves over seeds: when a curve reaches a quality, how much sooner one σ
distribution gets there than another, seed by seed, and intervals named for what they are (a seed range
is a seed range, with its coverage; a t interval assumes roughly normal differences).

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


def median_with_seed_range(values):
    """The median over seeds and the seed range [min, max] around it: every seed's value lies in it.

    Named for what it is. With n independent seeds from a continuous distribution the range covers
    that distribution's median with probability 1 − 2·0.5^n (`seed_range_coverage`): 75% for 3 seeds,
    87.5% for 4, 93.75% for 5; never 95% below 6 seeds. It is also exactly what a 95% percentile
    bootstrap of the median returns for n ≤ 5 (a resampled median is the minimum, and the maximum, with
    probability ≥ 5% > 2.5%), which is why this function replaced one by that name: its "95% bootstrap
    interval" was this range.

    inf (a step never reached) ranks above every number: the median is inf exactly when at least
    half of the seeds never got there (for an even count the mean of the middle pair is inf when
    either is), the upper end when any seed did. NaN and −inf are refused.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or len(values) == 0 or not (values > -np.inf).all():
        raise ValueError('median_with_seed_range: need a non-empty 1-D array of numbers or +inf')
    return MedianInterval(float(np.median(values)), float(values.min()), float(values.max()))


def seed_range_coverage(num_seeds):
    """The probability that the [min, max] of `num_seeds` independent draws of a continuous distribution
    contains its median: 1 − P(all above) − P(all below) = 1 − 2·0.5^num_seeds (order statistics)."""
    if num_seeds < 1:
        raise ValueError('seed_range_coverage: need at least one seed')
    return 1.0 - 2.0 * 0.5 ** num_seeds


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
