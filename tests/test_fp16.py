"""fp16 safety: a half-precision UNet / VAE output that overflows is detected, named, and recomputed in float32
(or refused with a one-line error) — forced on CPU by scaling the tiny models' output layers past float16's range
(65504) while float32 stays finite."""

from __future__ import annotations

import copy

import pytest
import torch

from dreammapping.priors import DiffusionPrior, NonFiniteOutputError


@pytest.fixture
def half_prior(tiny_latent_folder):
    prior = DiffusionPrior.from_pretrained(tiny_latent_folder, device="cpu", dtype=torch.float16)
    with torch.no_grad():  # outputs of order 1e5: inf in float16, finite in float32 (weights stay in range)
        prior.unet.conv_out.weight.mul_(1e5)
        prior.vae.encoder.conv_out.weight.mul_(1e2)
        prior.vae.quant_conv.weight.mul_(1e4)
    assert all(torch.isfinite(p).all() for p in (*prior.unet.parameters(), *prior.vae.parameters()))
    return prior


def test_unet_overflow_falls_back_to_float32(half_prior):
    prior = half_prior
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([100, 900])
    hidden = prior.text_embedding("a red cube").expand(2, -1, -1)
    with torch.no_grad():  # the overflow is real: the half-precision UNet's own output is not finite
        assert not torch.isfinite(prior.unet(x.half(), t, encoder_hidden_states=hidden).sample).all()
    with pytest.warns(RuntimeWarning, match="UNet's float16 output has .* non-finite"):
        eps = prior.eps(x, t, hidden)
    reference = copy.deepcopy(prior.unet).float()  # the same (fp16-rounded) weights in float32
    with torch.no_grad():
        expected = reference(x, t, encoder_hidden_states=hidden.float()).sample
    assert torch.isfinite(eps).all() and eps.abs().max() > 65504
    torch.testing.assert_close(eps, expected, rtol=1e-5, atol=1e-2)
    # the float32 copy is kept: a second overflow reuses it without a new warning; CFG goes through the guard
    prior.predict_noise(x, t, prior.encode_text("a red cube", view_dependent=False).for_views(2), 7.5)
    assert prior.fallbacks["UNet"] == 2 and len(prior._fp32_modules) == 1


def test_unet_overflow_without_fallback_is_a_clear_error(half_prior):
    half_prior.fp32_fallback = False
    hidden = half_prior.text_embedding("a").expand(1, -1, -1)
    with pytest.raises(NonFiniteOutputError, match=r"UNet's float16 output .* overflow.*--dtype float32"):
        half_prior.eps(torch.randn(1, 4, 8, 8), 500, hidden)
    half_prior.fp32_fallback = True
    with pytest.raises(NonFiniteOutputError, match="input is not finite"):  # garbage in is named as such
        half_prior.eps(torch.full((1, 4, 8, 8), float("nan")), 500, hidden)


def test_vae_encoder_overflow_falls_back_and_stays_differentiable(half_prior):
    prior = half_prior
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    with pytest.warns(RuntimeWarning, match="VAE encoder's float16 output"):
        z = prior.encode_images(x)
    assert torch.isfinite(z).all() and prior.fallbacks == {"VAE encoder": 1}
    z.square().sum().backward()
    reference = copy.deepcopy(prior.vae).float()
    x_ref = x.detach().clone().requires_grad_(True)
    z_ref = reference.encode(x_ref * 2 - 1).latent_dist.mean * prior.scaling_factor
    z_ref.square().sum().backward()
    torch.testing.assert_close(z, z_ref, rtol=1e-5, atol=1e-2)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-2)


def test_float32_prior_is_not_checked(tiny_latent_prior, monkeypatch):
    """In float32 the guard costs nothing: an inf passes through (the trainer's divergence check names it)."""
    unet = tiny_latent_prior.unet
    original = type(unet).forward

    def inf_forward(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        out.sample.fill_(float("inf"))
        return out

    monkeypatch.setattr(type(unet), "forward", inf_forward)
    hidden = tiny_latent_prior.text_embedding("a").expand(1, -1, -1)
    assert torch.isinf(tiny_latent_prior.eps(torch.randn(1, 4, 8, 8), 500, hidden)).all()


def test_trainer_names_a_non_finite_prior_output(tiny_latent_folder, tmp_path, monkeypatch):
    """A UNet output that stays non-finite in float32 stops the run with the diverged error, which names it."""
    from dreammapping import train as T

    def boom(self, *args, **kwargs):
        raise NonFiniteOutputError("the UNet's float16 output has 3 non-finite values, and the float32 fallback "
                                   "is not finite either")

    monkeypatch.setattr(DiffusionPrior, "predict_noise", boom)
    with pytest.raises(T.DivergedError, match="stopped at step 0: the UNet's float16 output"):
        T.generate("a red cube", prior=str(tiny_latent_folder), out=str(tmp_path / "run"), iterations=2, batch=1,
                   resolution=16, num_points=50, init="sphere", progress=False, turntable_frames=2,
                   turntable_size=16)
