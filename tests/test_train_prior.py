"""The embedded prior's trainer at tiny scale: loss goes down, the folder loads like SD, resume is exact."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from conftest import disk_full_at
from dreammapping.toyworld import train_prior as tp

COLORS = {"red": (0.9, 0.1, 0.1), "blue": (0.1, 0.2, 0.9), "green": (0.1, 0.7, 0.2)}
SHAPES = ("cube", "sphere")


def standin_batch(batch_size, resolution=16, generator=None, device="cpu", include_held_out=False):
    """Coloured squares ("cube") and disks ("sphere") on white, with toy-world-like captions."""
    names = list(COLORS)
    c = torch.randint(len(names), (batch_size,), generator=generator)
    s = torch.randint(len(SHAPES), (batch_size,), generator=generator)
    v = torch.randint(4, (batch_size,), generator=generator)
    yy, xx = torch.meshgrid(torch.arange(resolution), torch.arange(resolution), indexing="ij")
    r, mid = resolution / 4, (resolution - 1) / 2
    square = ((yy - mid).abs() <= r) & ((xx - mid).abs() <= r)
    disk = (yy - mid) ** 2 + (xx - mid) ** 2 <= r * r
    imgs = torch.ones(batch_size, 3, resolution, resolution)
    for i in range(batch_size):
        mask = square if s[i] == 0 else disk
        imgs[i][:, mask] = torch.tensor(COLORS[names[c[i]]])[:, None]
    tags = ("front", "side", "back", "overhead")
    caps = [f"a {names[c[i]]} {SHAPES[s[i]]}, {tags[v[i]]} view" for i in range(batch_size)]
    labels = {"color": c, "shape": s, "second_color": torch.full_like(c, -1), "second_shape": torch.full_like(c, -1),
              "relation": torch.full_like(c, -1)}
    return imgs.to(device), caps, {k: x.to(device) for k, x in labels.items()}


def tiny_config(tmp_path, **kw):
    base = dict(out=str(tmp_path / "prior"), preset="tiny", resolution=16, steps=4, batch_size=4, warmup_steps=1,
                checkpoint_every=2, log_every=1, samples_per_prompt=0, sample_steps=2, device="cpu", seed=3)
    base.update(kw)
    return tp.TrainPriorConfig(**base)


def test_tokenizer_round_trip_and_unknown_words(tmp_path):
    vocab = tp.build_vocabulary(captions=["a red cube, front view"])
    tok = tp.build_tokenizer(vocab, max_length=12)
    ids = tp.tokenize(tok, ["A Red cube, FRONT view", "a zebra cube", ""])
    assert ids.shape == (3, 12)
    assert tok.decode(ids[0], skip_special_tokens=True) == "a red cube , front view"
    assert ids[0, 0] == 2 and 3 in ids[0].tolist() and ids[0, -1] == 0  # [BOS] … [EOS] [PAD]…
    assert ids[1, 2] == tok.convert_tokens_to_ids("[UNK]") == 1
    assert ids[2, :2].tolist() == [2, 3]
    for w in ("front", "side", "back", "overhead", "view", "cube", "sphere", "torus"):
        assert w in vocab
    tok.save_pretrained(tmp_path / "tok")
    from transformers import AutoTokenizer

    again = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert torch.equal(tp.tokenize(again, ["A Red cube, FRONT view"]), ids[:1])


def test_a_few_steps_lower_the_loss():
    torch.manual_seed(0)
    vocab = tp.build_vocabulary(captions=["a red cube"])
    m = tp.build_models("tiny", vocab, resolution=16)
    g = torch.Generator().manual_seed(0)
    x0, caps, _ = standin_batch(8, 16, g)
    x0 = x0 * 2 - 1
    ids = tp.tokenize(m.tokenizer, caps)
    noise = torch.randn(x0.shape, generator=g)
    t = torch.randint(0, 1000, (8,), generator=g)
    ac = m.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    xt = ac.sqrt() * x0 + (1 - ac).sqrt() * noise
    params = list(m.unet.parameters()) + list(m.text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=2e-3)

    def loss_fn():
        return (m.unet(xt, t, encoder_hidden_states=m.text_encoder(ids)[0]).sample - noise).pow(2).mean()

    first = loss_fn()
    for _ in range(6):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
    with torch.no_grad():
        assert loss_fn().item() < 0.9 * first.item()


def test_train_writes_a_folder_that_loads_like_stable_diffusion(tmp_path):
    cfg = tiny_config(tmp_path, steps=2, samples_per_prompt=1)
    summary = tp.train(cfg, sample_fn=standin_batch, command="pytest")
    assert summary["steps"] == 2 and summary["samples_seen"] == 8
    folder = tmp_path / "prior"
    for f in ("model_index.json", "MODEL_CARD.md", "samples.png", "unet/config.json", "scheduler/scheduler_config.json",
              "text_encoder/config.json", "tokenizer/tokenizer.json"):
        assert (folder / f).exists(), f
    assert not (folder / "vae").exists()
    index = json.loads((folder / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]

    from diffusers import DDPMScheduler, UNet2DConditionModel
    from safetensors import safe_open
    from transformers import AutoTokenizer, CLIPTextModel

    with safe_open(str(folder / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.float16  # stored fp16
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=torch.float32)
    assert next(unet.parameters()).dtype == torch.float32 and unet.config.sample_size == 16
    text = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder")
    tok = AutoTokenizer.from_pretrained(folder, subfolder="tokenizer")
    sched = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
    assert sched.config.num_train_timesteps == 1000 and sched.config.prediction_type == "epsilon"
    emb = text(tp.tokenize(tok, ["a red cube"]))[0]
    assert emb.shape == (1, tok.model_max_length, unet.config.cross_attention_dim)

    imgs = tp.sample(folder, ["a red cube", "a blue sphere, side view"], steps=2, guidance_scale=5.0,
                     generator=torch.Generator().manual_seed(0))
    assert imgs.shape == (2, 3, 16, 16) and imgs.min() >= 0 and imgs.max() <= 1
    assert "samples seen" in (folder / "MODEL_CARD.md").read_text()


def test_resume_matches_an_uninterrupted_run(tmp_path):
    straight = tiny_config(tmp_path / "a")
    tp.train(straight, sample_fn=standin_batch, command="pytest")
    staged = tiny_config(tmp_path / "b", stop_after=2)
    s1 = tp.train(staged, sample_fn=standin_batch, command="pytest")
    assert s1["steps"] == 2
    s2 = tp.train(tiny_config(tmp_path / "b", resume=True), sample_fn=standin_batch, command="pytest")
    assert s2["steps"] == 4 and s2["samples_seen"] == 16
    a, meta_a = tp.load_checkpoint(tmp_path / "a" / "prior" / tp.CHECKPOINT_NAME)
    b, meta_b = tp.load_checkpoint(tmp_path / "b" / "prior" / tp.CHECKPOINT_NAME)
    assert meta_a["step"] == meta_b["step"] == 4
    assert meta_a["loss_history"] == meta_b["loss_history"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_corrupt_checkpoint_gives_one_line_error(tmp_path):
    bad = tmp_path / tp.CHECKPOINT_NAME
    bad.write_bytes(b"not a safetensors file at all")
    with pytest.raises(RuntimeError) as e:
        tp.load_checkpoint(bad)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as e:
        tp.cli_train_prior(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--batch-size" in out and "--resume" in out and "--max-minutes" in out


def test_init_from_continues_from_a_saved_folder(tmp_path):
    tp.train(tiny_config(tmp_path / "a", steps=2), sample_fn=standin_batch, command="pytest")
    src = tmp_path / "a" / "prior"
    # Zero steps: the saved EMA model is exactly the folder it started from (fp16 UNet round trip is exact).
    tp.train(tiny_config(tmp_path / "b", steps=0, init_from=str(src), seed=9), sample_fn=standin_batch,
             command="pytest")
    a, b = tp.load_model_folder(src), tp.load_model_folder(tmp_path / "b" / "prior")
    assert a.tokenizer.get_vocab() == b.tokenizer.get_vocab()
    for (n, p), q in zip(a.unet.state_dict().items(), b.unet.state_dict().values()):
        assert torch.equal(p, q), n
    for (n, p), q in zip(a.text_encoder.state_dict().items(), b.text_encoder.state_dict().values()):
        assert torch.equal(p, q), n
    with pytest.raises(ValueError, match="preset 'small'"):
        tp.train(tiny_config(tmp_path / "c", preset="small", init_from=str(src)), sample_fn=standin_batch)


class _ZeroUNet(torch.nn.Module):
    """Predicts ε̂ = 0 whatever it sees, so the loss is a known function of the drawn ε and t."""

    def forward(self, x, t, encoder_hidden_states=None):
        self.seen = (x, t)
        return type("Out", (), {"sample": torch.zeros_like(x)})()


def _text_encoder(ids):
    return (torch.zeros(ids.shape[0], ids.shape[1], 4),)


def test_min_snr_weights_known_values():
    ac = torch.tensor([0.99, 0.9, 0.5, 0.1])  # SNR 99, 9, 1, 0.111
    w = tp.min_snr_weights(ac, 5.0)
    torch.testing.assert_close(w, torch.tensor([5 / 99, 5 / 9, 1.0, 1.0]))
    assert torch.equal(tp.min_snr_weights(ac, 0.0), torch.ones(4))


@pytest.mark.parametrize("offset", [0.0, 0.3])
def test_denoising_loss_is_min_snr_weighted_eps_mse(offset):
    """Target ε (not x0), min-SNR weights indexed by the drawn t, offset noise a per-image per-channel constant."""
    x0 = torch.full((3, 3, 4, 4), 0.5)
    ac = torch.linspace(0.999, 0.01, 10)
    w = tp.min_snr_weights(ac, 5.0)
    unet = _ZeroUNet()
    loss, per = tp.denoising_loss(unet, _text_encoder, x0, torch.zeros(3, 5, dtype=torch.long),
                                  torch.Generator().manual_seed(7), ac.sqrt(), (1 - ac).sqrt(), w, offset)
    g = torch.Generator().manual_seed(7)  # replay the draws in the documented order: ε, offset, t
    eps = torch.randn(x0.shape, generator=g)
    if offset > 0:
        eps = eps + offset * torch.randn(3, 3, 1, 1, generator=g)
    t = torch.randint(0, 10, (3,), generator=g)
    ref_per = eps.pow(2).mean(dim=(1, 2, 3))  # ε̂ = 0, so the per-sample MSE is mean ε²
    torch.testing.assert_close(per, ref_per)
    torch.testing.assert_close(loss, (ref_per * w[t]).mean())
    x_t, t_seen = unet.seen
    assert torch.equal(t_seen, t)
    torch.testing.assert_close(x_t, ac[t].sqrt().view(-1, 1, 1, 1) * x0 + (1 - ac[t]).sqrt().view(-1, 1, 1, 1) * eps)


def test_train_uses_the_denoising_loss_and_logs_its_unweighted_mse(tmp_path, monkeypatch):
    calls = []
    real = tp.denoising_loss

    def spy(*args, **kwargs):
        loss, per = real(*args, **kwargs)
        calls.append((float(loss.detach()), float(per.detach().mean())))
        return loss, per

    monkeypatch.setattr(tp, "denoising_loss", spy)
    summary = tp.train(tiny_config(tmp_path, steps=3, log_every=3), sample_fn=standin_batch, command="test")
    assert len(calls) == 3
    assert summary["final_loss"] == pytest.approx(sum(c[1] for c in calls) / 3, rel=1e-5)


# ---- every writer through the atomic writer (issue 11) -------------------------------------------------------
@pytest.fixture(scope="module")
def trained_folder(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("atomic")
    tp.train(tiny_config(tmp, steps=2, samples_per_prompt=1), sample_fn=standin_batch, command="pytest")
    return tmp / "prior"


def _tree(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("target", ["unet", "text_encoder", "tokenizer", "scheduler", "model_index.json"])
def test_save_model_folder_keeps_the_old_folder_when_a_write_fails(trained_folder, tmp_path, monkeypatch, target):
    import shutil

    folder = tmp_path / "prior"
    shutil.copytree(trained_folder, folder)
    before = _tree(folder)
    models = tp.load_model_folder(folder)
    torch.nn.init.zeros_(next(models.unet.parameters()))  # new weights that must not half-replace the old
    disk_full_at(monkeypatch, target, "rename" if target != "model_index.json" else "replace")
    with pytest.raises(OSError):
        tp.save_model_folder(models, folder)
    after = _tree(folder)
    assert {k: v for k, v in after.items() if k.startswith(target)} == \
        {k: v for k, v in before.items() if k.startswith(target)}
    assert not [p for p in folder.iterdir() if ".tmp" in p.name or p.name.endswith(".old")]


def test_samples_and_model_card_keep_the_old_file_when_a_write_fails(trained_folder, tmp_path, monkeypatch):
    old = (trained_folder / "samples.png").read_bytes()
    disk_full_at(monkeypatch, "samples.png")
    with pytest.raises(OSError):
        tp.save_grid(torch.zeros(2, 3, 16, 16), trained_folder / "samples.png", nrow=2)
    assert (trained_folder / "samples.png").read_bytes() == old
    monkeypatch.undo()
    import shutil

    folder = tmp_path / "prior"
    shutil.copytree(trained_folder, folder)
    card = (folder / "MODEL_CARD.md").read_bytes()
    stale = folder / ".checkpoint.safetensors.999999999.0123abcd.tmp"  # from a writer killed long ago
    stale.write_bytes(b"half")
    disk_full_at(monkeypatch, "MODEL_CARD.md")
    with pytest.raises(OSError):  # a second training into the same folder whose last write fails
        tp.train(tiny_config(tmp_path, steps=2, samples_per_prompt=0, seed=4), sample_fn=standin_batch,
                 command="pytest")
    assert (folder / "MODEL_CARD.md").read_bytes() == card and not stale.exists()


# ---- prior v2: latent, in Stable Diffusion's format (`--kind latent`) ------------------------------------------
from dreammapping.toyworld import latent_prior as lp  # noqa: E402
from dreammapping.toyworld import shards  # noqa: E402
from dreammapping.toyworld import train_latent as tl  # noqa: E402


def standin_world(batch_size, resolution=32, generator=None, device="cpu", include_held_out=False,
                  two_object_fraction=0.3, supersample=2, world=2):
    """`standin_batch` with `sample_batch`'s full keyword set (the shard renderer passes them all)."""
    return standin_batch(batch_size, resolution, generator, device, include_held_out)


def latent_config(tmp_path, **kw):
    base = dict(out=str(tmp_path / "v2"), data=str(tmp_path / "data"), preset="tiny", vae_preset="tiny", resolution=32,
                shard_size=8, train_shards=2, val_shards=1, vae_steps=4, vae_batch_size=4, steps=4, batch_size=4,
                warmup_steps=1, checkpoint_every=2, log_every=1, samples_per_prompt=0, sample_steps=2, device="cpu",
                seed=5, encode_batch=8)
    base.update(kw)
    return tl.LatentPriorConfig(**base)


@pytest.fixture(scope="module")
def latent_run(tmp_path_factory):
    """One finished tiny v2 run (both stages, samples, card) and its summary."""
    tmp = tmp_path_factory.mktemp("latent")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the tests that compare with it run (conftest.one_thread): same reduction order
    try:
        summary = tl.train(latent_config(tmp, samples_per_prompt=1), sample_fn=standin_world, command="pytest v2")
    finally:
        torch.set_num_threads(threads)
    return tmp, summary


def test_latent_run_writes_a_stable_diffusion_folder_and_a_model_card(latent_run):
    tmp, summary = latent_run
    folder = tmp / "v2"
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline" and index["vae"] == ["diffusers", "AutoencoderKL"]
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
    assert lp.vae_downsample(vae) == 4 and vae.config.latent_channels == 4
    card = (folder / "MODEL_CARD.md").read_text()
    for needle in ("samples seen", "pytest v2", "PSNR", "scaling_factor", "cpu"):
        assert needle in card, needle
    assert summary["vae"]["samples_seen"] == 16 and summary["unet"]["samples_seen"] == 16
    assert (folder / "samples.png").exists()


def test_scaling_factor_is_one_over_the_std_of_the_saved_vaes_training_latents(latent_run):
    tmp, summary = latent_run
    torch.testing.assert_close(lp.latent_scaling_factor(torch.tensor([[1.0, 3.0], [1.0, 3.0]]).view(1, 4, 1, 1)),
                               1 / torch.tensor([1.0, 3.0, 1.0, 3.0]).std().item())
    vae = tl.load_vae(tmp / "v2" / "vae", torch.device("cpu"))
    train = shards.load_split(Path(summary["data"]["folder"]), "train", 2)
    # the factor was set from the EMA weights in fp32; the saved fp16 VAE gives the same std to fp16 precision
    lat = shards.encode_images(vae, train.tensors)
    assert vae.config.scaling_factor == pytest.approx(1 / lat.std().item(), rel=2e-2)
    assert summary["vae"]["scaling_factor"] == vae.config.scaling_factor


def test_psnr_known_values():
    a = torch.full((2, 3, 4, 4), 0.5)
    torch.testing.assert_close(tl.psnr(a, a + 0.1), torch.full((2,), 20.0))
    torch.testing.assert_close(tl.psnr(a, a + 0.01), torch.full((2,), 40.0))


def test_shards_are_rendered_once_and_reused(tmp_path):
    calls = []

    def counting(n, **kw):
        calls.append(n)
        return standin_world(n, **kw)

    spec = shards.ShardSpec(resolution=16, shard_size=5, seed=1, world="w")
    first = shards.ensure_shards(tmp_path, spec, 2, 1, counting)
    assert (first.rendered, first.reused) == (3, 0) and sum(calls) == 15
    before = {p.name: p.read_bytes() for p in first.folder.glob("*.safetensors")}
    again = shards.ensure_shards(tmp_path, spec, 3, 1, counting)  # one more shard asked for: only it is rendered
    assert (again.rendered, again.reused) == (1, 3) and sum(calls) == 20 and again.folder == first.folder
    assert all((again.folder / n).read_bytes() == b for n, b in before.items())
    # the same shard rendered afresh (another folder) is byte-identical: shards are a function of the seed
    fresh = shards.ensure_shards(tmp_path / "other", spec, 1, 0, standin_world)
    assert (fresh.folder / "train_00000.safetensors").read_bytes() == before["train_00000.safetensors"]
    other_world = shards.ensure_shards(tmp_path, dataclasses.replace(spec, world="v2"), 1, 0, counting)
    assert other_world.folder != first.folder and other_world.rendered == 1
    shard = shards.load_shard(first.folder / "val_00000.safetensors")
    assert shard.tensors.dtype == torch.uint8 and shard.tensors.shape == (5, 3, 16, 16) and len(shard.captions) == 5


def test_second_latent_run_renders_nothing(latent_run, tmp_path, monkeypatch):
    tmp, summary = latent_run
    cfg = latent_config(tmp, out=str(tmp_path / "again"), stage="vae", vae_steps=1)
    rendered = []
    monkeypatch.setattr(shards, "render_shard", lambda *a, **k: rendered.append(a) or pytest.fail("re-rendered"))
    s = tl.train(cfg, sample_fn=standin_world, command="pytest")
    assert s["data"]["rendered"] == 0 and s["data"]["reused"] == 3 and not rendered


def test_latent_resume_is_bit_identical_to_an_uninterrupted_run(latent_run, tmp_path):
    tmp, _ = latent_run
    straight = tmp / "v2"
    staged = latent_config(tmp, out=str(tmp_path / "staged"), stop_after=2, samples_per_prompt=1)
    steps = []
    for _ in range(4):  # vae 0→2, vae 2→4 + unet 0→2, unet 2→4 + folder, and a no-op rerun when all is done
        s = tl.train(staged, sample_fn=standin_world, command="pytest v2")
        steps.append((s.get("vae", {}).get("steps"), s.get("unet", {}).get("steps")))
    assert steps == [(2, None), (4, 2), (4, 4), (4, 4)]
    for name in (tl.VAE_CHECKPOINT, tl.UNET_CHECKPOINT):
        a, meta_a = tp.load_checkpoint(straight / name)
        b, meta_b = tp.load_checkpoint(tmp_path / "staged" / name)
        assert meta_a["loss_history"] == meta_b["loss_history"] and a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
    for sub in ("vae", "unet", "text_encoder"):
        fa = next((straight / sub).glob("*.safetensors")).read_bytes()
        assert fa == next((tmp_path / "staged" / sub).glob("*.safetensors")).read_bytes(), sub


def test_latent_resume_refuses_other_settings(latent_run, tmp_path):
    tmp, _ = latent_run
    import shutil

    shutil.copytree(tmp / "v2", tmp_path / "v2")
    with pytest.raises(ValueError, match="vae_preset"):
        tl.train(latent_config(tmp, out=str(tmp_path / "v2"), vae_preset="small"), sample_fn=standin_world)
    with pytest.raises(ValueError, match="needs a finished VAE"):
        tl.train(latent_config(tmp, out=str(tmp_path / "none"), stage="unet"), sample_fn=standin_world)


def test_unet_stage_trains_on_scaled_latents_with_the_eps_target(latent_run, tmp_path, monkeypatch):
    """x0 of every step is a training latent × scaling_factor; the loss is `denoising_loss` (ε target, checked on a
    known input by test_denoising_loss_is_min_snr_weighted_eps_mse)."""
    tmp, summary = latent_run
    seen = []
    real = tl.denoising_loss

    def spy(unet, text_encoder, x0, *args, **kwargs):
        seen.append(x0.detach().clone())
        return real(unet, text_encoder, x0, *args, **kwargs)

    monkeypatch.setattr(tl, "denoising_loss", spy)
    import shutil

    out = tmp_path / "v2"
    shutil.copytree(tmp / "v2", out)
    (out / tl.UNET_CHECKPOINT).unlink()
    tl.train(latent_config(tmp, out=str(out), stage="unet", steps=2), sample_fn=standin_world)
    vae = tl.load_vae(out / "vae", torch.device("cpu"))
    lat_dir = next((out / "latents").iterdir())
    lat = shards.load_split(lat_dir, "train", 2, name="mean").tensors.float() * vae.config.scaling_factor
    assert len(seen) == 2
    for x0 in seen:
        for row in x0:
            assert any(torch.equal(row, cand) for cand in lat)


def test_cli_kind_selects_the_trainer(capsys):
    with pytest.raises(SystemExit) as e:
        tp.cli_train_prior(["--kind", "latent", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--vae-steps" in out and "--stage" in out and "--data" in out
    with pytest.raises(SystemExit) as e:
        tp.cli_train_prior(["--kind", "nerf"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err
    assert tp.split_kind(["--out", "x", "--kind=latent", "--steps", "3"]) == ("latent", ["--out", "x", "--steps", "3"])
    assert tp.split_kind(["--out", "x"]) == ("pixel", ["--out", "x"])


def test_latent_run_killed_mid_run_continues_to_the_same_weights(tmp_path):
    """kill -9 of `dreammapping train-prior --kind latent` at a random moment, then the same command again: it ends
    where an uninterrupted run (same seed) ends, bit for bit."""
    import os
    import signal
    import subprocess
    import sys
    import time

    def command(out):
        return [sys.executable, "-m", "dreammapping.cli", "train-prior", "--kind", "latent", "--out", str(out),
                "--data", str(tmp_path / "data"), "--preset", "tiny", "--vae-preset", "tiny", "--resolution", "16",
                "--shard-size", "8", "--train-shards", "2", "--vae-steps", "6", "--vae-batch-size", "4", "--steps", "6",
                "--batch-size", "4", "--checkpoint-every", "1", "--samples-per-prompt", "0", "--device", "cpu",
                "--threads", "1", "--warmup-steps", "1"]

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(tp.__file__).parents[2]),
                                                         os.environ.get("PYTHONPATH", "")])}
    subprocess.run(command(tmp_path / "straight"), check=True, env=env, capture_output=True)
    victim = subprocess.Popen(command(tmp_path / "killed"), env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "killed" / tl.VAE_CHECKPOINT
    deadline = time.monotonic() + 300
    while not ckpt.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    done = subprocess.run(command(tmp_path / "killed"), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resumed from" in done.stdout
    for name in (tl.VAE_CHECKPOINT, tl.UNET_CHECKPOINT):
        a, _ = tp.load_checkpoint(tmp_path / "straight" / name)
        b, _ = tp.load_checkpoint(tmp_path / "killed" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert not list((tmp_path / "killed").glob(".*.tmp"))


def test_vocabulary_picks_up_the_worlds_words_and_v1_keeps_its_own():
    v2 = tp.build_vocabulary()
    for w in ("white", "black", "with", "stripes", "checks", "dots"):
        assert w in v2, w
    from dreammapping.toyworld import grammar

    v1 = tp.build_vocabulary(known=grammar.V1_KNOWN_WORDS)
    assert not {"white", "black", "stripes", "checks", "dots"} & set(v1)
    assert set(v1) < set(v2)
