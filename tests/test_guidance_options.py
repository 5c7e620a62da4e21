"""Options every guidance method has (ω(t) weightings) and CSD's annealed negative scale, run through the methods."""

from __future__ import annotations

import math

import pytest
import torch

from dreammapping.guidance import METHODS
from dreammapping.guidance.base import WEIGHTINGS

B = 2
# ω at ᾱ = 0.25, by hand
KNOWN = {"sds": 0.75, "uniform": 1.0, "sqrt": math.sqrt(0.75), "fantasia3d": 0.5 * 0.75, "ism": math.sqrt(3.0)}


def test_every_weighting_has_a_known_value():
    assert set(KNOWN) == set(WEIGHTINGS)
    for name, value in KNOWN.items():
        assert float(WEIGHTINGS[name](torch.tensor(0.25))) == pytest.approx(value, rel=1e-6), name


def _image_grad(method, emb, seed=5, step=0, max_steps=1):
    images = torch.rand(B, 3, 16, 16, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    torch.manual_seed(seed)
    out = method(images, emb, step, max_steps)
    out.loss.backward()
    torch.manual_seed(seed)
    t, _ = method.draw(method.prior.encode_images(images.detach()), step, max_steps)
    return images.grad, t, out.logs


@pytest.mark.parametrize("name", [w for w in WEIGHTINGS if w != "sds"])
def test_weighting_scales_the_sds_update_by_its_ratio(name, tiny_prior):
    """Same draws: SDS with ω_w gives ω_w(t)/ω_sds(t) × SDS's update, per sample."""
    emb = tiny_prior.encode_text("a red cube").for_views(["front", "back"])
    cfg = METHODS["sds"].Config
    base, t, _ = _image_grad(METHODS["sds"](tiny_prior, cfg(guidance_scale=3.0)), emb)
    other, t2, _ = _image_grad(METHODS["sds"](tiny_prior, cfg(guidance_scale=3.0, weighting=name)), emb)
    assert torch.equal(t, t2)
    a = tiny_prior.alphas_cumprod[t]
    ratio = (WEIGHTINGS[name](a) / WEIGHTINGS["sds"](a)).view(-1, 1, 1, 1)
    torch.testing.assert_close(other, base * ratio, atol=1e-6, rtol=1e-4)


def test_csd_negative_scale_anneals_linearly(tiny_prior):
    """At half-way (step 5 of 10) 0.5 → 1.5 must act exactly as a constant 1.0, and not as its start value."""
    emb = tiny_prior.encode_text("a cube").for_views(["front", "back"])
    cfg = METHODS["csd"].Config

    def csd(**kw):
        return METHODS["csd"](tiny_prior, cfg(guidance_scale=3.0, negative_prompt="blurry", **kw))

    annealed, _, logs = _image_grad(csd(negative_scale=0.5, negative_scale_end=1.5), emb, step=5, max_steps=10)
    constant, _, _ = _image_grad(csd(negative_scale=1.0), emb, step=5, max_steps=10)
    start, _, _ = _image_grad(csd(negative_scale=0.5), emb, step=5, max_steps=10)
    assert logs["negative_scale"] == pytest.approx(1.0)
    torch.testing.assert_close(annealed, constant)
    assert not torch.allclose(annealed, start)
    _, _, first = _image_grad(csd(negative_scale=0.5, negative_scale_end=1.5), emb, step=0, max_steps=10)
    assert first["negative_scale"] == pytest.approx(0.5)
