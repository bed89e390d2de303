"""benchmarks/seed_statistics.py by hand: crossings interpolated in log step, speed-ups per seed,
medians with their seed range (and its coverage) with never-reached seeds, and paired t intervals."""

import math

import numpy as np
import pytest

from benchmarks.seed_statistics import (median_with_seed_range, paired_difference, reach_step, seed_range_coverage,
                                        speedup)

STEPS = [1000, 2000, 4000, 8000]


# --------------------------------------------------------------------------------------------------
# reach_step

def test_crossing_between_evaluations_is_interpolated_in_log_step():
    steps, values = [500, 1000, 4000, 8000], [5.0, 3.0, 1.0, 0.5]
    # Halfway in value between 1000 and 4000 steps: the geometric mean, √(1000 · 4000) = 2000 (linear: 2500).
    assert reach_step(steps, values, 2.0) == pytest.approx(2000.0)
    # A quarter of the way: 1000 · 4^(1/4).
    assert reach_step(steps, values, 2.5) == pytest.approx(1000 * 4 ** 0.25)
    assert reach_step(steps, values, 1.0) == 4000.0  # hit exactly at an evaluation


def test_first_evaluation_below_target_never_reached_and_infinite_values():
    assert reach_step(STEPS, [1.0, 0.5, 0.2, 0.1], 2.0) == 1000.0  # no extrapolation before the first evaluation
    assert reach_step(STEPS, [4.0, 3.0, 2.5, 2.1], 2.0) == math.inf
    assert reach_step(STEPS, [math.inf, math.inf, 1.0, 0.5], 2.0) == 4000.0  # the limit of the interpolation
    with pytest.raises(ValueError):
        reach_step(STEPS, [4.0, math.nan, 1.0, 0.5], 2.0)
    with pytest.raises(ValueError):
        reach_step([1000, 1000, 4000, 8000], [4.0, 3.0, 1.0, 0.5], 2.0)


def test_a_curve_that_goes_down_up_and_down_again_reaches_at_its_first_crossing():
    steps, values = [1000, 2000, 4000, 8000, 16000], [4.0, 2.0, 5.0, 1.5, 1.0]
    # First crossing of 2.5: between 1000 (4) and 2000 (2), 3/4 of the way in value: 1000 · 2^(3/4).
    assert reach_step(steps, values, 2.5) == pytest.approx(1000 * 2 ** 0.75)
    # 1.8 is crossed only after the bump: between 4000 (5) and 8000 (1.5), t = 3.2/3.5.
    assert reach_step(steps, values, 1.8) == pytest.approx(4000 * 2 ** (3.2 / 3.5))


# --------------------------------------------------------------------------------------------------
# speedup

def test_speedup_is_a_ratio_per_seed_not_of_averaged_curves():
    baseline = [[4.0, 2.0, 1.0, 0.5],   # seed 0: its value at 50% (4000 steps) is 1, reached at 4000
                [8.0, 4.0, 2.0, 1.0]]   # seed 1: 2, reached at 4000
    variant = [[2.0, 1.0, 0.5, 0.25],   # seed 0 reaches 1 at 2000: 2× faster
               [8.0, 8.0, 4.0, 2.0]]    # seed 1 reaches 2 at 8000: 2× slower
    np.testing.assert_allclose(speedup(STEPS, baseline, STEPS, variant, 0.5), [2.0, 0.5])
    # The mean curves would give one number, 4000 / (4000 · 2^(2/3)) = 0.63, true of neither seed.
    np.testing.assert_allclose(speedup(STEPS, baseline[1], STEPS, variant[1], 0.5), [0.5])


def test_speedup_counts_the_baseline_from_its_own_first_crossing_and_zero_when_never_reached():
    baseline = [4.0, 1.0, 3.0, 2.0]  # its final value, 2, was first reached at 1000 · 2^(2/3), not at 8000
    first = 1000 * 2 ** (2 / 3)
    np.testing.assert_allclose(speedup(STEPS, baseline, STEPS, [4.0, 4.0, 2.0, 1.0], 1.0), [first / 4000])
    np.testing.assert_allclose(speedup(STEPS, baseline, STEPS, [3.0, 2.5, 2.2, 2.1], 1.0), [0.0])
    # At 25% (2000 steps) the baseline is at 1, first reached there. A variant on its own schedule crosses
    # 1 halfway (in value) between 500 and 2000 steps, at 1000: twice as fast.
    np.testing.assert_allclose(speedup(STEPS, baseline, [500, 2000], [2.0, 0.0], 0.25), [2.0])
    with pytest.raises(ValueError):
        speedup(STEPS, baseline, STEPS, baseline, 0.3)  # no evaluation at 2400 steps


# --------------------------------------------------------------------------------------------------
# median_with_seed_range

def test_median_with_seed_range_hand_cases():
    assert median_with_seed_range([3.0, 3.0, 3.0, 3.0]) == (3.0, 3.0, 3.0)
    assert median_with_seed_range([2.0, 1.0, 3.0]) == (2.0, 1.0, 3.0)
    assert median_with_seed_range([5.0, 1.0, 4.0, 2.0, 3.0]) == (3.0, 1.0, 5.0)
    assert median_with_seed_range([1.5, 0.5, 2.5, 1.0, 0.75, 2.0]) == (1.25, 0.5, 2.5)  # even: the middle pair's mean


def test_seed_range_ranks_never_reached_above_everything():
    assert median_with_seed_range([1.0, 2.0, math.inf]) == (2.0, 1.0, math.inf)
    assert median_with_seed_range([1.0, math.inf, math.inf]) == (math.inf, 1.0, math.inf)
    assert median_with_seed_range([1.0, 2.0, 3.0, math.inf]) == (2.5, 1.0, math.inf)
    for bad in ([1.0, math.nan], [1.0, -math.inf], []):
        with pytest.raises(ValueError):
            median_with_seed_range(bad)


def test_seed_range_is_what_a_95_percent_bootstrap_of_a_median_of_few_seeds_was():
    """Why the interval was renamed: the percentile bootstrap of the median of n <= 5 seeds (10,000 resamples,
    2.5% and 97.5% quantiles, no interpolation) is [min, max]: a resampled median is the minimum whenever most
    draws are, with probability 7/27 for 3 seeds and 0.058 for 5 (> 2.5%)."""
    rng = np.random.default_rng(0)
    for n in (3, 4, 5):
        values = rng.lognormal(size=n)
        medians = np.median(values[rng.integers(0, n, (10000, n))], axis=1)
        bootstrap = (np.quantile(medians, 0.025, method='lower'), np.quantile(medians, 0.975, method='higher'))
        assert bootstrap == median_with_seed_range(values)[1:]


def test_seed_range_coverage_is_the_order_statistics_one():
    # [min, max] misses the median only when every seed lies on one side of it: 2 · 0.5^n.
    assert seed_range_coverage(5) == 0.9375 and seed_range_coverage(3) == 0.75 and seed_range_coverage(1) == 0.0
    draws = np.random.default_rng(1).standard_normal((200000, 5))  # median 0
    covered = np.mean((draws.min(axis=1) <= 0) & (draws.max(axis=1) >= 0))
    assert abs(covered - 0.9375) < 0.003  # binomial SE 0.0005
    with pytest.raises(ValueError):
        seed_range_coverage(0)


# --------------------------------------------------------------------------------------------------
# paired_difference

def test_paired_difference_by_hand():
    result = paired_difference([3.0, 5.0, 4.0, 6.0], [1.0, 2.0, 2.0, 3.0])
    np.testing.assert_array_equal(result.differences, [2.0, 3.0, 2.0, 3.0])
    # Mean 2.5; std with ddof=1 √(1/3); standard error √(1/3)/2 = 0.288675; t_{0.975, 3} = 3.182446.
    assert result.mean == pytest.approx(2.5)
    assert result.standard_error == pytest.approx(0.2886751346)
    assert (result.low, result.high) == pytest.approx((2.5 - 0.9186931, 2.5 + 0.9186931))
    # Three seeds: differences 1, 2, 6: variance 7 (ddof=1), standard error √(7/3), t_{0.975, 2} = 4.302653.
    result = paired_difference([1.0, 2.0, 6.0], [0.0, 0.0, 0.0])
    assert result.standard_error == pytest.approx(math.sqrt(7 / 3))
    assert (result.low, result.high) == pytest.approx((3 - 4.302653 * math.sqrt(7 / 3), 3 + 4.302653 * math.sqrt(7 / 3)))
    with pytest.raises(ValueError):
        paired_difference([1.0], [0.0])
