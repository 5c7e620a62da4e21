"""DiffusionPrior: the real loading path on tiny saved pipelines, CFG noise prediction, errors, sampling."""

from __future__ import annotations

import pytest
import torch

from dreammapping.priors import DiffusionPrior, PriorNotFoundError, embedded_prior_path

from conftest import build_tiny_pipeline



def _manual_hidden(prior, text):
    ids = prior.tokenizer(text, padding="max_length", max_length=prior.max_length, truncation=True,
                          return_tensors="pt").input_ids
    with torch.no_grad():
        return prior.text_encoder(ids).last_hidden_state


@pytest.mark.parametrize("latent", [False, True])
def test_loads_and_predicts_noise_with_cfg(latent, tiny_prior, tiny_latent_prior):
    prior = tiny_latent_prior if latent else tiny_prior
    assert prior.is_latent is latent and (prior.vae is not None) is latent
    assert prior.resolution == 16 and prior.num_train_timesteps == 1000
    assert prior.alphas_cumprod.dtype == torch.float32 and prior.alphas_cumprod.shape == (1000,)
    for module in (prior.unet, prior.text_encoder) + ((prior.vae,) if latent else ()):
        assert not module.training and not any(p.requires_grad for p in module.parameters())

    emb = prior.encode_text("a red cube").for_views(["front", "back"])
    z = prior.encode_images(torch.rand(2, 3, 16, 16))
    assert z.shape == ((2, 4, 8, 8) if latent else (2, 3, 16, 16))
    t = torch.tensor([10, 700])
    eps_cfg, eps_cond, eps_uncond = prior.predict_noise(z, t, emb, guidance_scale=5.0)

    with torch.no_grad():
        cond = torch.cat([_manual_hidden(prior, "a red cube, front view"), _manual_hidden(prior, "a red cube, back view")])
        uncond = _manual_hidden(prior, "").expand(2, -1, -1)
        e_c = prior.unet(z, t, encoder_hidden_states=cond).sample
        e_u = prior.unet(z, t, encoder_hidden_states=uncond).sample
    torch.testing.assert_close(eps_cond, e_c, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(eps_uncond, e_u, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(eps_cfg, e_u + 5.0 * (e_c - e_u), atol=1e-4, rtol=1e-4)


def test_text_embeddings_views_and_cache(tiny_prior):
    te = tiny_prior.encode_text("a cube", negative_prompt="blurry")
    assert set(te.views) == {"front", "side", "back", "overhead"}
    pe = te.for_views(["side", "overhead", "side"])
    assert pe.cond.shape[0] == 3 and pe.uncond.shape == pe.cond.shape
    torch.testing.assert_close(pe.cond[0], _manual_hidden(tiny_prior, "a cube, side view")[0])
    torch.testing.assert_close(pe.uncond[0], _manual_hidden(tiny_prior, "blurry")[0])
    assert tiny_prior.text_embedding("a cube, side view") is tiny_prior.text_embedding("a cube, side view")
    plain = tiny_prior.encode_text("a cube", view_dependent=False).for_views(["front", "back"])
    torch.testing.assert_close(plain.cond, _manual_hidden(tiny_prior, "a cube").expand(2, -1, -1))
    assert len(tiny_prior.encode_text("a cube").for_views(4)) == 4


def test_encode_is_differentiable_and_resizes(tiny_latent_prior, tiny_prior):
    x = torch.rand(1, 3, 24, 24, requires_grad=True)
    z = tiny_latent_prior.encode_images(x)
    assert z.shape == (1, 4, 8, 8)
    z.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(tiny_prior.encode_images(x), 2 * x - 1)
    torch.testing.assert_close(tiny_prior.decode(2 * x - 1), x)
    assert tiny_latent_prior.decode(tiny_latent_prior.encode_images(x)).shape == (2, 3, 16, 16)


def test_v_prediction_is_converted_to_eps(tmp_path, tiny_prior):
    folder = build_tiny_pipeline(tmp_path / "v", prediction_type="v_prediction")
    prior = DiffusionPrior.from_pretrained(str(folder), device="cpu")
    assert prior.prediction_type == "v_prediction"
    emb = prior.encode_text("a cube").for_views(1)
    z = torch.randn(1, 3, 16, 16)
    t = torch.tensor([400])
    _, eps_cond, _ = prior.predict_noise(z, t, emb)
    with torch.no_grad():
        v = prior.unet(z, t, encoder_hidden_states=emb.cond).sample
    a = prior.alphas_cumprod[400]
    torch.testing.assert_close(eps_cond, a.sqrt() * v + (1 - a).sqrt() * z, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("what", ["hub_id", "no_folder", "folder_without_unet", "bad_name"])
def test_missing_weights_give_one_clear_line(what, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    name = {"hub_id": "stabilityai/stable-diffusion-2-1-base", "no_folder": str(tmp_path / "nope" / "x"),
            "folder_without_unet": str(tmp_path), "bad_name": "not-a-model"}[what]
    with pytest.raises(PriorNotFoundError) as info:
        DiffusionPrior.from_pretrained(name, device="cpu")
    message = str(info.value)
    assert "\n" not in message and name in message
    assert info.value.__cause__ is None  # no chained traceback behind the line
    if what == "hub_id":
        assert "Hugging Face cache" in message and "huggingface-cli download" in message


@pytest.mark.skipif((embedded_prior_path() / "unet").is_dir(), reason="the embedded prior is shipped")
def test_embedded_missing_is_clear():
    with pytest.raises(PriorNotFoundError, match="embedded prior"):
        DiffusionPrior.from_pretrained("embedded", device="cpu")


@pytest.mark.skipif(not (embedded_prior_path() / "unet").is_dir(), reason="the embedded prior is not shipped yet")
def test_embedded_prior_loads():
    prior = DiffusionPrior.from_pretrained("embedded", device="cpu")
    assert prior.resolution == 32 and not prior.is_latent
    emb = prior.encode_text("a red cube").for_views(["front"])
    eps_cfg, _, _ = prior.predict_noise(torch.zeros(1, 3, 32, 32), 500, emb, 3.0)
    assert torch.isfinite(eps_cfg).all()


def test_sample_ddim_and_dpm_solver(tiny_latent_prior):
    from diffusers import DPMSolverMultistepScheduler

    g = torch.Generator().manual_seed(0)
    images = tiny_latent_prior.sample(["a cube", "a ball"], num_steps=3, guidance_scale=2.0, generator=g)
    assert images.shape == (2, 3, 16, 16) and images.min() >= 0 and images.max() <= 1
    again = tiny_latent_prior.sample(["a cube", "a ball"], num_steps=3, guidance_scale=2.0,
                                     generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(images, again)
    dpm = tiny_latent_prior.sample(["a cube"], num_steps=3, scheduler=DPMSolverMultistepScheduler)
    assert dpm.shape == (1, 3, 16, 16) and torch.isfinite(dpm).all()


def test_sample_with_cfg_guides_from_the_unconditional_towards_the_conditional_output():
    """CFG scale 0 samples the unconditional model alone, scale 1 the conditional one alone (the loop of both priors)."""
    from diffusers import DDIMScheduler, DDPMScheduler

    from dreammapping.priors import sample_with_cfg

    config = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False).config
    cond_model = lambda x, t: 0.3 * x + 0.1  # noqa: E731 — two different linear "UNets"
    uncond_model = lambda x, t: -0.2 * x  # noqa: E731

    def run(pair, scale, eta=0.0):
        noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
        return sample_with_cfg(pair, noise, DDIMScheduler.from_config(config), 5, scale,
                               generator=torch.Generator().manual_seed(1), eta=eta)

    both = lambda x, t: (cond_model(x, t), uncond_model(x, t))  # noqa: E731
    for eta in (0.0, 1.0):
        torch.testing.assert_close(run(both, 0.0, eta), run(lambda x, t: (uncond_model(x, t),) * 2, 0.0, eta))
        torch.testing.assert_close(run(both, 1.0, eta), run(lambda x, t: (cond_model(x, t),) * 2, 0.0, eta))
    assert not torch.allclose(run(both, 3.0), run(both, 1.0))
    assert not torch.allclose(run(both, 1.0, 1.0), run(both, 1.0, 0.0))  # eta > 0 draws DDIM's noise


def test_sample_default_eta_is_stochastic_for_pixel_priors_only(tiny_prior, tiny_latent_prior):
    def run(prior, **kw):
        return prior.sample(["a cube"], num_steps=4, guidance_scale=2.0, generator=torch.Generator().manual_seed(0),
                            **kw)

    torch.testing.assert_close(run(tiny_prior), run(tiny_prior, eta=1.0))
    assert not torch.allclose(run(tiny_prior), run(tiny_prior, eta=0.0))
    torch.testing.assert_close(run(tiny_latent_prior), run(tiny_latent_prior, eta=0.0))
    assert not torch.allclose(run(tiny_latent_prior), run(tiny_latent_prior, eta=1.0))


def test_prompt_overflow_says_from_which_word_the_prompt_is_cut(tiny_prior):
    # the tiny tokenizer spells letters: 24 tokens are a few short words
    assert tiny_prior.prompt_overflow("a cube", view_dependent=False) == ""
    words = "a red cube on top of a blue sphere".split()
    ids = tiny_prior.tokenizer(" ".join(words), truncation=False, verbose=False).input_ids
    assert len(ids) > tiny_prior.max_length == 24
    message = tiny_prior.prompt_overflow(" ".join(words), view_dependent=False)
    # the first word that does not fit, by counting tokens of growing prefixes (start + letters + end)
    fits = max(k for k in range(len(words) + 1)
               if len(tiny_prior.tokenizer(" ".join(words[:k]), verbose=False).input_ids) <= 24)
    assert f"from word {fits + 1} ({words[fits]!r}) on is cut off" in message and f"{len(ids)} tokens" in message
    # the view tag comes after the prompt: a prompt that fits alone may lose its tag
    assert tiny_prior.prompt_overflow("a red cube cone", view_dependent=False) == ""
    assert "the view tag ('overhead view' and the like) is cut off" in tiny_prior.prompt_overflow("a red cube cone")


# ---- the embedded priors by name, and prior v2's folder (Stable Diffusion's format) ---------------------------
@pytest.fixture(scope="module")
def v2_folder(tmp_path_factory):
    """A tiny prior-v2 folder written by `latent_prior.save_latent_folder` (random weights, 32² ↔ 4×8² latents)."""
    from dreammapping.toyworld import latent_prior as lp
    from dreammapping.toyworld.train_prior import build_vocabulary

    torch.manual_seed(0)
    models = lp.build_latent_models("tiny", "tiny", build_vocabulary(captions=["a red cube, front view"]), 32)
    models.vae.register_to_config(scaling_factor=0.7)
    return lp.save_latent_folder(models, tmp_path_factory.mktemp("v2") / "prior-v2")


def test_v2_folder_loads_in_plain_diffusers(v2_folder):
    from diffusers import AutoencoderKL, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(v2_folder, safety_checker=None)
    assert isinstance(pipe.vae, AutoencoderKL) and pipe.vae_scale_factor == 4
    assert pipe.vae.config.scaling_factor == pytest.approx(0.7) and pipe.unet.config.in_channels == 4
    out = pipe("a red cube", num_inference_steps=2, output_type="pt", generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (1, 3, 32, 32)  # unet sample_size 8 × vae_scale_factor 4


def test_v2_folder_loads_through_the_sd_path(v2_folder):
    """The same path as SD 2.1: VAE encoder in the loop, posterior mean × scaling_factor, decode ÷ scaling_factor."""
    prior = DiffusionPrior.from_pretrained(v2_folder, device="cpu")
    assert prior.is_latent and prior.downsample == 4 and prior.resolution == 32 and prior.scaling_factor == 0.7
    x = torch.rand(2, 3, 32, 32)
    z = prior.encode_images(x)
    assert z.shape == (2, 4, 8, 8)
    with torch.no_grad():
        ref = prior.vae.encode(x * 2 - 1).latent_dist.mean * 0.7
        torch.testing.assert_close(z, ref)
        img = prior.decode(z)
        torch.testing.assert_close(img, ((prior.vae.decode(ref / 0.7).sample + 1) / 2).clamp(0, 1))
    assert img.shape == (2, 3, 32, 32)
    assert prior.scheduler.config.clip_sample is False and prior.prediction_type == "epsilon"
    assert prior.sample(["a red cube"], num_steps=2, guidance_scale=3.0).shape == (1, 3, 32, 32)


def test_embedded_names(v2_folder, monkeypatch, tmp_path):
    import dreammapping.priors as P

    assert P.embedded_prior_path("embedded-v1") == P.embedded_prior_path() == P.embedded_prior_path("embedded")
    assert P.embedded_prior_path("embedded-v2").name == "prior-v2"
    assert all(P.is_embedded(n) for n in ("embedded", "embedded-v1", "embedded-v2")) and not P.is_embedded("sd")
    # embedded-v2 not shipped: one line that says how to train it
    monkeypatch.setattr(P, "embedded_prior_path", lambda name="embedded": tmp_path / "absent")
    with pytest.raises(PriorNotFoundError) as e:
        DiffusionPrior.from_pretrained("embedded-v2", device="cpu")
    assert "\n" not in str(e.value) and "train-prior --kind latent" in str(e.value)
    # shipped: it loads its folder by the code any folder loads by (a latent prior)
    monkeypatch.setattr(P, "embedded_prior_path", lambda name="embedded": v2_folder)
    prior = DiffusionPrior.from_pretrained("embedded-v2", device="cpu")
    assert prior.is_latent and prior.name == "embedded-v2"


@pytest.mark.skipif(not (embedded_prior_path() / "unet").is_dir(), reason="the embedded prior is not shipped yet")
def test_embedded_v1_is_the_embedded_prior():
    a = DiffusionPrior.from_pretrained("embedded", device="cpu")
    b = DiffusionPrior.from_pretrained("embedded-v1", device="cpu")
    assert not a.is_latent and not b.is_latent
    for (n, p), q in zip(a.unet.state_dict().items(), b.unet.state_dict().values()):
        assert torch.equal(p, q), n
