"""View-dependent prompts: LucidDreamer's azimuth blend and Perp-Neg (Armandpour et al. 2023), checked against
their formulas written out per view in plain Python, and through the guidance methods on the tiny UNet."""

from __future__ import annotations

import math

import pytest
import torch

from dreammapping.guidance import METHODS
from dreammapping.priors import PromptEmbeddings, perpendicular, view_embeddings

SCALE = 4.0
W, FRONT_DECAY, SIDE_DECAY = -2.0, 2.0, 10.0
AZIMUTHS = [0.0, 10.0, 45.0, -60.0, 85.0, 90.0, 100.0, 150.0, -179.0, 270.0]


def reference_view(azimuth: float):
    """(blend of (tag, coefficient), [(negative tag, weight)]) for one view, as LucidDreamer's train.py reads."""
    a = (azimuth + 180.0) % 360.0 - 180.0
    if -90.0 <= a < 90.0:
        r = 1 - a / 90 if a >= 0 else 1 + a / 90
        front_w = 0.0 if r > 0.8 else math.exp(-r * FRONT_DECAY) * W
        side_w = 0.0 if r < 0.2 else math.exp(-(1 - r) * SIDE_DECAY) * W
        return [("front", r), ("side", 1 - r)], [("front", front_w), ("side", side_w)]
    r = 1 - (a - 90) / 90 if a >= 0 else 1 + (a + 90) / 90
    side_w = 0.0 if r > 0.8 else math.exp(-r * SIDE_DECAY) * W / 2
    return [("side", r), ("back", 1 - r)], [("side", side_w), ("front", W)]


@pytest.fixture
def text(tiny_prior):
    return tiny_prior.encode_text("a red cube")


def test_blend_and_weights_match_the_formula(text):
    emb = text.for_views(["front"] * len(AZIMUTHS), azimuth=torch.tensor(AZIMUTHS))
    blended = view_embeddings(emb, "interpolate")
    perp = view_embeddings(emb, "perp-neg", W, FRONT_DECAY, SIDE_DECAY)
    for i, azimuth in enumerate(AZIMUTHS):
        blend, negatives = reference_view(azimuth)
        expected = sum(c * text.views[tag][0] for tag, c in blend)
        torch.testing.assert_close(blended.cond[i], expected, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(perp.cond[i], expected, atol=1e-6, rtol=1e-5)
        weights = dict(negatives)
        for k, tag in enumerate(("front", "side")):
            assert torch.equal(perp.negatives[k, i], text.views[tag][0])
            assert perp.negative_weights[k, i].item() == pytest.approx(weights[tag], abs=1e-6)
    # the tags mode leaves the embeddings alone; the unconditional side never changes
    assert view_embeddings(emb, "tag") is emb
    assert torch.equal(perp.uncond, emb.uncond) and blended.negatives is None


def test_perpendicular_component():
    x, y = torch.randn(3, 4, 5, 5), torch.randn(3, 4, 5, 5)
    p = perpendicular(x, y)
    assert (p * y).sum((1, 2, 3)).abs().max() < 1e-4  # orthogonal to y, per sample
    torch.testing.assert_close(perpendicular(y, y), torch.zeros_like(y), atol=1e-5, rtol=0)
    torch.testing.assert_close(perpendicular(x, torch.zeros_like(y)), x)  # no direction: x unchanged


def _eps(prior, x, t, hidden):
    with torch.no_grad():
        return prior.unet(x, t, encoder_hidden_states=hidden).sample


def reference_perp_neg_cfg(prior, text, x_t, t, azimuths):
    """ε_u + s·(Δ + Σ_k w_k·(Δ_k − ⟨Δ_k,Δ⟩/||Δ||²·Δ)) per view, by hand (flattened dot products)."""
    out = []
    for i, azimuth in enumerate(azimuths):
        blend, negatives = reference_view(azimuth)
        xi, ti = x_t[i:i + 1], t[i:i + 1]
        e_u = _eps(prior, xi, ti, text.uncond)
        e_pos = _eps(prior, xi, ti, sum(c * text.views[tag] for tag, c in blend))
        delta = (e_pos - e_u).flatten()
        total = delta.clone()
        for tag, w in negatives:
            d_k = (_eps(prior, xi, ti, text.views[tag]) - e_u).flatten()
            total += w * (d_k - (d_k @ delta) / (delta @ delta) * delta)
        out.append((e_u.flatten() + SCALE * total).view_as(e_u))
    return torch.cat(out)


@pytest.mark.parametrize("name", ["sds", "csd", "vdm"])
def test_methods_with_perp_neg_match_the_formula(name, tiny_prior, text):
    """The image gradient of a method run with view_prompt="perp-neg" against the formula by hand."""
    prior, azimuths = tiny_prior, [30.0, 160.0]
    cls = METHODS[name]
    method = cls(prior, cls.Config(guidance_scale=SCALE, view_prompt="perp-neg"))
    emb = text.for_views(["front", "back"], azimuth=torch.tensor(azimuths))
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    torch.manual_seed(5)
    out = method(images, emb, step=0, max_steps=10)
    out.loss.backward()

    torch.manual_seed(5)
    z = prior.encode_images(images.detach())
    t, noise = method.draw(z, 0, 10)
    a = prior.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * z + (1 - a).sqrt() * noise
    e_cfg = reference_perp_neg_cfg(prior, text, x_t, t, azimuths)
    if name == "sds":
        g = (1 - a) * (e_cfg - noise)
    elif name == "csd":
        g = (1 - a) * (e_cfg - _eps(prior, x_t, t, text.uncond.expand(2, -1, -1)))
    else:  # VDM: Mψ sees the positive (blended) prompt's prediction
        blended = view_embeddings(emb, "interpolate").cond
        with torch.no_grad():
            mapped = method.operator(_eps(prior, x_t, t, blended), t)
        lam = torch.where(t.view(-1, 1, 1, 1) > method.config.dca_cutoff, torch.ones_like(a), 1 - a)
        g = (1 - a) * (e_cfg - lam * mapped)
    torch.testing.assert_close(images.grad, 2 * g / 2, atol=1e-4, rtol=1e-3)


def test_perp_neg_differs_from_plain_cfg_and_needs_cameras(tiny_prior, text):
    emb = text.for_views(["side"], azimuth=torch.tensor([60.0]))
    x = torch.randn(1, 3, 16, 16)
    plain = tiny_prior.predict_noise(x, 500, view_embeddings(emb, "interpolate"), SCALE)[0]
    perp = tiny_prior.predict_noise(x, 500, view_embeddings(emb, "perp-neg"), SCALE)[0]
    assert not torch.allclose(plain, perp)  # at 60° both negatives are active
    with pytest.raises(ValueError, match="azimuth"):
        view_embeddings(text.for_views(["front"]), "perp-neg")  # no cameras (text-to-2D)
    with pytest.raises(ValueError, match="view_prompt"):
        view_embeddings(emb, "sideways")
    with pytest.raises(ValueError, match="perp-neg"):
        METHODS["nfsd"](tiny_prior, METHODS["nfsd"].Config(view_prompt="perp-neg"))
    # a batch of one view is expanded with its azimuth and negatives
    grown = view_embeddings(emb, "perp-neg").expand(3)
    assert grown.negatives.shape[:2] == (2, 3) and grown.negative_weights.shape == (2, 3)
    assert isinstance(grown, PromptEmbeddings) and grown.azimuth.tolist() == [60.0] * 3
