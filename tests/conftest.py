"""Shared fixtures: tiny randomly initialised Stable Diffusion–format pipelines saved with `save_pretrained`.

Nothing is downloaded: the UNet, CLIP text encoder, tokenizer (a letter-level vocabulary), DDPM scheduler and,
for the latent variant, an AutoencoderKL are all built from configs with a fixed seed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dreammapping.testing import letter_tokenizer

TINY_MAX_LENGTH = 24


def _tokenizer(folder: Path):
    return letter_tokenizer(folder, TINY_MAX_LENGTH)


def build_tiny_pipeline(folder: Path, latent: bool = False, prediction_type: str = "epsilon",
                        stable_diffusion: bool = False) -> Path:
    """Save a tiny SD-format pipeline into `folder` and return it (pixel space 16², or 4×8² latents of 16²).

    `stable_diffusion=True` (latent): the layout a hub checkpoint has — a `StableDiffusionPipeline` with its
    model_index.json, SD 2.1-base's PNDM scheduler config, and a VAE that down-samples ×8 as SD's does (4×8² latents
    of 64² images)."""
    from diffusers import (AutoencoderKL, DDPMScheduler, PNDMScheduler, StableDiffusionPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    tokenizer = _tokenizer(folder / "_vocab")
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=TINY_MAX_LENGTH, bos_token_id=0, eos_token_id=1,
        pad_token_id=1, projection_dim=16))
    channels = 4 if latent else 3
    unet = UNet2DConditionModel(
        sample_size=8 if latent else 16, in_channels=channels, out_channels=channels, layers_per_block=1,
        block_out_channels=(8, 16), norm_num_groups=4, cross_attention_dim=16, attention_head_dim=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
    if stable_diffusion:
        vae = AutoencoderKL(  # four levels: ×8 down-sampling, as SD's VAE
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(4, 4, 8, 8), norm_num_groups=4,
            layers_per_block=1, sample_size=64, scaling_factor=0.18215,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
        # SD 2.1-base's own scheduler config (PNDM); the prior reads it as DDPM for ᾱ_t
        scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                  num_train_timesteps=1000, set_alpha_to_one=False, skip_prk_steps=True,
                                  steps_offset=1, prediction_type=prediction_type)
        StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                requires_safety_checker=False).save_pretrained(folder)
        return folder
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                              beta_end=0.012, prediction_type=prediction_type, clip_sample=False)
    unet.save_pretrained(folder / "unet")
    text_encoder.save_pretrained(folder / "text_encoder")
    tokenizer.save_pretrained(folder / "tokenizer")
    scheduler.save_pretrained(folder / "scheduler")
    if latent:
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                            norm_num_groups=4, layers_per_block=1, sample_size=16,
                            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
        vae.save_pretrained(folder / "vae")
    return folder


def build_tiny_shap_e(folder: Path, sdf_bias: float | None = None) -> Path:
    """A `ShapEPipeline` folder with random tiny weights (sizes as in diffusers' own Shap-E tests: the renderer's MLP
    is 8 wide, the latent 32×16, whose rows params_proj turns into the MLP's first four weight matrices).
    `sdf_bias`: added to the SDF output's bias, so that the random MLP describes a solid with a surface inside the
    box (None: as initialised)."""
    from diffusers import HeunDiscreteScheduler, PriorTransformer, ShapEPipeline
    from diffusers.pipelines.shap_e import ShapERenderer
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(0)
    tokenizer = _tokenizer(folder / "_vocab")
    text_encoder = CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=tokenizer.model_max_length, bos_token_id=0, eos_token_id=1, pad_token_id=1,
        projection_dim=16))
    prior = PriorTransformer(num_attention_heads=2, attention_head_dim=8, num_layers=1, embedding_dim=16,
                             num_embeddings=32, additional_embeddings=0, time_embed_act_fn="gelu",
                             norm_in_type="layer", encoder_hid_proj_type=None, added_emb_type=None,
                             time_embed_dim=32, embedding_proj_dim=16, clip_embed_dim=32)
    renderer = ShapERenderer(param_shapes=((8, 93), (8, 8), (8, 8), (8, 8)), d_latent=16, d_hidden=8, n_output=12)
    if sdf_bias is not None:
        with torch.no_grad():
            renderer.mlp.mlp[-1].bias[0] = sdf_bias  # channel 0 is the SDF
    scheduler = HeunDiscreteScheduler(beta_schedule="exp", num_train_timesteps=1024, prediction_type="sample",
                                      use_karras_sigmas=True, clip_sample=True, clip_sample_range=1.0)
    ShapEPipeline(prior=prior, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
                  shap_e_renderer=renderer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_pixel_folder(tmp_path_factory) -> Path:
    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny_pixel"))


@pytest.fixture(scope="session")
def tiny_latent_folder(tmp_path_factory) -> Path:
    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny_latent"), latent=True)


@pytest.fixture(scope="session")
def tiny_prior(tiny_pixel_folder):
    from dreammapping.priors import DiffusionPrior

    return DiffusionPrior.from_pretrained(tiny_pixel_folder, device="cpu")


@pytest.fixture(scope="session")
def tiny_latent_prior(tiny_latent_folder):
    from dreammapping.priors import DiffusionPrior

    return DiffusionPrior.from_pretrained(tiny_latent_folder, device="cpu")


@pytest.fixture(autouse=True)
def one_thread():
    """Every test runs on one torch thread: tiny models run fastest so, above all on a shared 2-core machine
    (no OpenMP spin-waiting; two threads fighting other jobs were measured 4–50× slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def disk_full_at(monkeypatch, target: str, name: str = "replace") -> None:
    """Make os.<name> fail with ENOSPC (a full disk) when it would put a temporary at a path named `target`: the last
    step of every atomic write, so a test sees what a writer keeps when its final rename fails."""
    import errno
    import os

    real = getattr(os, name)

    def fail(src, dst, *args, **kwargs):
        if os.path.basename(dst) == target and ".tmp" in os.path.basename(src):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(src))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, name, fail)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Caches the code writes (auto threads' calibration, FID references) go to a folder of this test session,
    never the user's ~/.cache; a test that sets its own DREAMMAPPING_CACHE still wins."""
    mp = pytest.MonkeyPatch()
    mp.setenv("DREAMMAPPING_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()
