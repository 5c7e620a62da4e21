"""stats: the cluster bootstrap covers at its level on clustered data where a seed-level bootstrap does not; Holm
against a hand-computed example; TOST rejects exactly when the interval lies inside the margin; determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dreammapping import stats


def clustered(rng, prompts=20, seeds=3, between=1.0, within=0.25, mean=0.0):
    """Values with a shared effect per prompt (ICC = between² / (between² + within²) ≈ 0.94) and their prompts."""
    effect = rng.normal(0, between, prompts)
    values = (effect[:, None] + rng.normal(0, within, (prompts, seeds)) + mean).ravel()
    return list(values), [p for p in range(prompts) for _ in range(seeds)]


def test_cluster_bootstrap_covers_near_its_level_where_a_seed_level_bootstrap_under_covers():
    rng = np.random.default_rng(1)
    hits_cluster = hits_naive = 0
    trials = 300
    for t in range(trials):
        values, prompts = clustered(rng)
        c = stats.cluster_bootstrap(values, prompts, n_resamples=1000, seed=t)
        n = stats.bootstrap(values, n_resamples=1000, seed=t)
        hits_cluster += c.low <= 0.0 <= c.high
        hits_naive += n.low <= 0.0 <= n.high
    # 300 trials: the standard error of a coverage near 0.95 is ~0.013
    assert 0.89 <= hits_cluster / trials <= 0.99
    assert hits_naive / trials <= 0.82  # ~0.75 expected: 60 near-copies read as 60 samples


def test_the_estimate_is_the_mean_of_prompt_means_and_order_free():
    values = [1.0, 1.0, 1.0, 1.0, 4.0]  # prompt a: four seeds at 1, prompt b: one at 4
    prompts = ["a", "a", "a", "a", "b"]
    e = stats.cluster_bootstrap(values, prompts, n_resamples=2000)
    assert e.mean == 2.5 and e.n_clusters == 2 and e.n == 5
    assert stats.cluster_means(values, prompts) == {"a": 1.0, "b": 4.0}
    shuffled = stats.cluster_bootstrap(values[::-1], prompts[::-1], n_resamples=2000)
    assert (shuffled.low, shuffled.high, shuffled.p_value) == (e.low, e.high, e.p_value)
    again = stats.cluster_bootstrap(values, prompts, n_resamples=2000)
    assert np.array_equal(again.boot, e.boot)  # seeded: bit for bit
    # the resampled statistic only takes cluster-mean combinations: {1, 2.5, 4}
    assert set(np.round(e.boot, 12)) <= {1.0, 2.5, 4.0}


def test_p_value_is_small_for_a_clear_effect_and_large_for_none():
    rng = np.random.default_rng(0)
    values, prompts = clustered(rng, mean=3.0)
    assert stats.cluster_bootstrap(values, prompts).p_value < 0.01
    values, prompts = clustered(np.random.default_rng(0), within=0.0, between=1e-9)
    assert stats.cluster_bootstrap(values, prompts).p_value > 0.2


def test_no_values_gives_nan_and_nonfinite_values_are_dropped():
    e = stats.cluster_bootstrap([], [])
    assert math.isnan(e.mean) and e.n == 0
    e = stats.cluster_bootstrap([1.0, float("nan"), 3.0], ["a", "a", "b"], n_resamples=100)
    assert e.mean == 2.0 and e.n == 2
    with pytest.raises(ValueError):
        stats.cluster_bootstrap([1.0], ["a", "b"])


def test_paired_differences_keep_their_prompts():
    a = {("p", 0): 1.0, ("p", 1): 2.0, ("q", 0): 5.0, ("r", 0): 1.0}
    b = {("p", 0): 0.5, ("p", 1): 1.0, ("q", 0): float("nan"), ("s", 0): 0.0}
    diffs, clusters = stats.paired(a, b)
    assert diffs == [0.5, 1.0] and clusters == ["p", "p"]


def test_holm_matches_a_hand_computed_example():
    # sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 → max(0.06, 0.04) = 0.06
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    out = stats.holm([0.01, math.nan, 0.02])  # a test that could not run is not in the family
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.02)


def _estimate_with(boot: np.ndarray) -> stats.Estimate:
    return stats.Estimate(float(boot.mean()), *np.quantile(boot, [0.025, 0.975]), 1.0, 10, 30, boot=boot)


def test_tost_rejects_only_when_the_interval_lies_inside_the_margin():
    rng = np.random.default_rng(0)
    inside = _estimate_with(rng.normal(0.0, 0.01, 10_000))  # 90% interval ≈ ±0.016
    t = stats.tost(inside, margin=0.05)
    assert t.equivalent and t.p_value < 0.05 and -0.05 < t.low < t.high < 0.05
    assert not stats.tost(inside, margin=0.01).equivalent  # the interval crosses ±0.01
    shifted = _estimate_with(rng.normal(0.04, 0.01, 10_000))  # 90% interval ≈ [0.024, 0.056]: crosses +0.05
    t = stats.tost(shifted, margin=0.05)
    assert not t.equivalent and t.p_value > 0.05
    # the decision and the p-value agree: equivalent ⇔ p < α
    for margin in (0.02, 0.03, 0.06, 0.08):
        t = stats.tost(shifted, margin)
        assert t.equivalent == (t.p_value < 0.05)
    with pytest.raises(ValueError):
        stats.tost(inside, margin=0.0)
