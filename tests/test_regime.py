"""The regime rule: the best scale by the prior's own samples, ties to the lowest; undrawable prompts; sampling
and scoring wired together (a stub prior that draws the prompt's truth, or grey)."""

from __future__ import annotations

import torch

from dreammapping import regime
from dreammapping.regime import SampleQuality


def row(prompt, scale, acc):
    return SampleQuality(prompt, scale, 8, acc, acc, acc)


def test_primary_scale_is_the_best_and_ties_go_to_the_lowest():
    rows = [row("a", 2.0, 0.9), row("b", 2.0, 0.8), row("a", 3.0, 0.95), row("b", 3.0, 0.9), row("a", 8.5, 0.2),
            row("b", 8.5, 0.1)]
    assert regime.primary_scale(rows) == 3.0  # 0.925 vs 0.85
    rows += [row("a", 5.0, 0.94), row("b", 5.0, 0.9)]  # 0.92: within 0.02 of 0.925, but higher than 3
    assert regime.primary_scale(rows) == 3.0
    tied = [row("a", 2.0, 0.91), row("a", 3.0, 0.92)]
    assert regime.primary_scale(tied) == 2.0
    assert regime.undrawable(rows, 8.5) == ["a", "b"] and regime.undrawable(rows, 3.0) == []


def test_prior_sample_quality_scores_the_samples_with_the_classifier(monkeypatch):
    from dreammapping.toyworld.classifier import AttributeClassifier

    class TruthPrior:  # draws the true scene at high scales, grey at low ones
        device = "cpu"
        is_latent = False

        def sample(self, prompts, num_steps, guidance_scale, scheduler=None, generator=None):
            from dreammapping import cameras as C
            from dreammapping.toyworld import grammar
            from dreammapping.toyworld.sdf import render_scenes

            if guidance_scale < 3:
                return torch.full((len(prompts), 3, 32, 32), 0.5)
            cams = C.sample_orbit(len(prompts), 32, 32, C.OrbitConfig(), generator=torch.Generator().manual_seed(0))
            return render_scenes([grammar.parse(prompts[0])], cams)[0].clamp(0, 1).permute(0, 3, 1, 2)

    rows = regime.prior_sample_quality(TruthPrior(), AttributeClassifier.from_pretrained().eval(), ["a red cube"],
                                       [2.0, 5.0], n=4, steps=2)
    assert [(r.guidance_scale, r.n) for r in rows] == [(2.0, 4), (5.0, 4)]
    assert rows[1].attr_color > rows[0].attr_color and rows[1].attr_all >= 0.5
    assert regime.primary_scale(rows) == 5.0
