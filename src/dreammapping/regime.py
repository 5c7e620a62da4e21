"""The regime rule of docs/prereg/claims_v2.md: how well the prior draws each prompt at each guidance scale, and the
scale where its own samples are best (the primary regime of the claims benchmark).

`prior_sample_quality` samples the prior (the FID reference sampler, `evaluate_models.prior_reference_images`) and
scores the samples with the toy world's classifier; `primary_scale` applies the rule; `undrawable` names the
prompts whose samples are mostly wrong at a scale (the report's "without the prompts the prior cannot draw").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from dreammapping.evaluate_models import attribute_accuracy, prior_reference_images
from dreammapping.toyworld import grammar

TIE = 0.02  # scales whose mean accuracy is within this of the best count as tied; the lowest of them is taken
DRAWABLE = 0.5  # a prompt whose samples are right less often than this is one "the prior cannot draw"


@dataclass(frozen=True)
class SampleQuality:
    """The classifier's accuracy on `n` samples of `prompt` at `guidance_scale` (diffusers' form)."""

    prompt: str
    guidance_scale: float
    n: int
    attr_color: float
    attr_shape: float
    attr_all: float


def prior_sample_quality(prior, classifier, prompts: Sequence[str], scales: Sequence[float], n: int = 32,
                         steps: int = 30, seed: int = 0) -> list[SampleQuality]:
    """One `SampleQuality` per (scale, prompt); the samples of each pair are seeded by `seed` alone, so a prompt's
    row does not depend on which other prompts or scales are asked for."""
    rows = []
    for scale in scales:
        for prompt in prompts:
            g = torch.Generator(device=getattr(prior, "device", "cpu")).manual_seed(seed)
            images = prior_reference_images(prior, prompt, n, steps, g, guidance_scale=float(scale))
            acc = attribute_accuracy(classifier, images, grammar.parse(prompt))
            rows.append(SampleQuality(prompt, float(scale), n, acc["color"], acc["shape"], acc["all"]))
    return rows


def primary_scale(rows: Sequence[SampleQuality], tie: float = TIE) -> float:
    """The scale with the highest mean `attr_all` over prompts; among scales within `tie` of it, the lowest."""
    by: dict[float, list[float]] = {}
    for r in rows:
        by.setdefault(r.guidance_scale, []).append(r.attr_all)
    if not by:
        raise ValueError("no sample-quality rows")
    means = {s: sum(v) / len(v) for s, v in by.items()}
    best = max(means.values())
    return min(s for s, m in means.items() if m >= best - tie)


def undrawable(rows: Sequence[SampleQuality], scale: float, threshold: float = DRAWABLE) -> list[str]:
    """The prompts whose samples at `scale` have `attr_all` < `threshold`, sorted."""
    return sorted({r.prompt for r in rows if r.guidance_scale == scale and r.attr_all < threshold})
