"""One bootstrap for every benchmark: the prompt is the unit, seeds are resampled within prompts.

Seeds of one prompt are near-copies (the paired differences of the claims records have an intra-class correlation
of ~0.95), so 30 (prompt, seed) pairs from 10 prompts are worth about 10 samples, and a bootstrap that resamples
the 30 pairs as if independent gives intervals that are too narrow. Here:

- `cluster_bootstrap(values, clusters)`: the statistic is the mean over clusters (prompts) of each cluster's mean
  (every prompt weighs the same, whatever its number of seeds); a resample draws the clusters with replacement and,
  inside each drawn cluster, its values with replacement (two-stage). Percentile interval, a two-sided p-value for
  "mean = 0" by inverting it, and the bootstrap means themselves. Seeded: the same input gives the same output
  bit for bit, whatever the order the values come in.
- `paired(a, b)`: per (prompt, seed) differences a − b over the keys both have, with their prompts as clusters;
  `cluster_means` gives the per-prompt differences a report shows.
- `holm(p)`: Holm's step-down adjusted p-values (family-wise error across the claims).
- `tost(estimate, margin)`: two one-sided tests for equivalence within ±margin: equivalent at level α exactly
  when the (1 − 2α) bootstrap interval lies inside (−margin, +margin). No "tie" without it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Hashable, Mapping, Sequence

import numpy as np

N_RESAMPLES = 10_000
LEVEL = 0.95
SEED = 0


@dataclass(frozen=True)
class Estimate:
    """A cluster-bootstrap estimate: `mean` (mean of the cluster means), the percentile interval [low, high] at
    `level`, the two-sided bootstrap p-value for mean = 0, the number of clusters and of values, and the bootstrap
    means [n_resamples] (for TOST and for intervals at other levels). NaN everywhere for no values."""

    mean: float
    low: float
    high: float
    p_value: float
    n_clusters: int
    n: int
    level: float = LEVEL
    boot: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False, compare=False)

    def interval(self, level: float) -> tuple[float, float]:
        """The percentile interval of the same bootstrap means at another `level`."""
        if self.boot.size == 0:
            return (self.mean, self.mean) if self.n else (math.nan, math.nan)
        tail = (1.0 - level) / 2.0
        return float(np.quantile(self.boot, tail)), float(np.quantile(self.boot, 1.0 - tail))

    @property
    def sign(self) -> int:
        """+1 when the interval lies above 0, −1 below, 0 when it holds 0 or is undefined."""
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            return 0
        return 1 if self.low > 0 else -1 if self.high < 0 else 0


def _finite(values: Sequence[float], clusters: Sequence[Hashable]) -> dict[Hashable, list[float]]:
    """{cluster: its finite values}, clusters in a fixed (sorted by repr) order, values in input order."""
    if len(values) != len(clusters):
        raise ValueError(f"{len(values)} values but {len(clusters)} cluster labels")
    groups: dict[Hashable, list[float]] = {}
    for v, c in zip(values, clusters):
        if v is not None and math.isfinite(float(v)):
            groups.setdefault(c, []).append(float(v))
    return {c: sorted(groups[c]) for c in sorted(groups, key=repr)}  # order-free: sorted clusters and values


def cluster_means(values: Sequence[float], clusters: Sequence[Hashable]) -> dict[Hashable, float]:
    """The mean of each cluster's finite values (e.g. the per-prompt difference), clusters sorted."""
    return {c: float(np.mean(v)) for c, v in _finite(values, clusters).items()}


def cluster_bootstrap(values: Sequence[float], clusters: Sequence[Hashable], n_resamples: int = N_RESAMPLES,
                      level: float = LEVEL, seed: int = SEED) -> Estimate:
    """Two-stage cluster bootstrap of the mean of cluster means (see the module's docstring). `values` [N] with a
    cluster label each (the prompt); non-finite values are dropped. One cluster: its values are still resampled
    (an interval over seeds only, which says nothing about other prompts — callers should require ≥ 2)."""
    groups = _finite(values, clusters)
    n = sum(len(v) for v in groups.values())
    k = len(groups)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, math.nan, 0, 0, level)
    sizes = np.array([len(v) for v in groups.values()])
    padded = np.zeros((k, sizes.max()))
    for i, v in enumerate(groups.values()):
        padded[i, :len(v)] = v
    mean = float(np.mean([np.mean(v) for v in groups.values()]))
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, k, size=(n_resamples, k))  # stage 1: clusters with replacement
    m = sizes[pick]  # [B,K] the drawn clusters' sizes
    inner = np.floor(rng.random((n_resamples, k, sizes.max())) * m[..., None]).astype(np.int64)  # stage 2
    drawn = padded[pick[..., None], inner]  # [B,K,max m]
    used = np.arange(sizes.max()) < m[..., None]
    boot = ((drawn * used).sum(-1) / m).mean(-1)
    tail = (1.0 - level) / 2.0
    low, high = float(np.quantile(boot, tail)), float(np.quantile(boot, 1.0 - tail))
    # p for mean = 0: the smallest two-sided level at which the percentile interval excludes 0 (+1 smoothing)
    below, above = int((boot <= 0).sum()), int((boot >= 0).sum())
    p = min(1.0, 2.0 * (min(below, above) + 1) / (n_resamples + 1))
    return Estimate(mean, low, high, p, k, n, level, boot)


def bootstrap(values: Sequence[float], **kw) -> Estimate:
    """The ordinary (i.i.d.) percentile bootstrap of the mean: every value its own cluster. Right for values that
    are independent (e.g. one per prompt); too narrow for seeds of the same prompt (use `cluster_bootstrap`)."""
    values = list(values)
    return cluster_bootstrap(values, list(range(len(values))), **kw)


def paired(a: Mapping[tuple[Hashable, Hashable], float], b: Mapping[tuple[Hashable, Hashable], float]
           ) -> tuple[list[float], list[Hashable]]:
    """(differences a − b, their clusters) over the (cluster, member) keys — (prompt, seed) — that both have with
    finite values, in sorted key order."""
    diffs, clusters = [], []
    for key in sorted(set(a) & set(b), key=repr):
        va, vb = a[key], b[key]
        if va is None or vb is None or not (math.isfinite(va) and math.isfinite(vb)):
            continue
        diffs.append(float(va) - float(vb))
        clusters.append(key[0])
    return diffs, clusters


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order: sort ascending, multiply the i-th smallest (from 0)
    by (m − i), make them non-decreasing, cap at 1. Reject at family-wise level α where adjusted p < α. NaN
    p-values (tests that could not be run) are left out of the family and stay NaN."""
    idx = [i for i, p in enumerate(p_values) if p is not None and math.isfinite(p)]
    m = len(idx)
    out = [math.nan] * len(p_values)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: p_values[i])):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        out[i] = running
    return out


@dataclass(frozen=True)
class Tost:
    """Two one-sided tests against ±margin: `p_value` = the larger one-sided bootstrap p; `equivalent` when the
    (1 − 2α) interval [low, high] lies inside (−margin, +margin)."""

    equivalent: bool
    p_value: float
    low: float
    high: float
    margin: float
    alpha: float


def tost(estimate: Estimate, margin: float, alpha: float = 0.05) -> Tost:
    """Equivalence of `estimate`'s mean to 0 within ±`margin` (> 0) from its bootstrap means."""
    if not margin > 0:
        raise ValueError(f"an equivalence margin must be > 0, got {margin}")
    if estimate.boot.size == 0:
        return Tost(False, math.nan, math.nan, math.nan, margin, alpha)
    low, high = estimate.interval(1.0 - 2.0 * alpha)
    b = estimate.boot
    p_low = (int((b <= -margin).sum()) + 1) / (b.size + 1)  # H0: mean ≤ −margin
    p_high = (int((b >= margin).sum()) + 1) / (b.size + 1)  # H0: mean ≥ +margin
    return Tost(bool(-margin < low and high < margin), max(p_low, p_high), low, high, margin, alpha)
