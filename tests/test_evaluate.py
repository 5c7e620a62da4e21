"""Evaluation metrics on known cases, the CLIP path on a tiny random CLIP, Fréchet distance on known Gaussians,
and `evaluate_run`'s skipping (missing weights → a skipped entry with a reason, the other metrics still computed)."""

from __future__ import annotations

import json
import math
import sys
import types
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from conftest import disk_full_at
from dreammapping import evaluate as ev
from dreammapping import evaluate_models as em


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """FID reference samples go to a per-test folder, never the user's ~/.cache."""
    monkeypatch.setenv("DREAMMAPPING_CACHE", str(tmp_path / "dm-cache"))


# ---- helpers ---------------------------------------------------------------------------------------------------
def disc(h: int, w: int, cx: float, cy: float, r: float) -> torch.Tensor:
    """Bool mask [H,W] of the pixels whose centres lie inside the circle."""
    y, x = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    return (x - cx) ** 2 + (y - cy) ** 2 <= r * r


def lens_iou(r: float, d: float) -> float:
    """IoU of two discs of radius r whose centres are d apart (analytic)."""
    inter = 2 * r * r * math.acos(d / (2 * r)) - 0.5 * d * math.sqrt(4 * r * r - d * d)
    return inter / (2 * math.pi * r * r - inter)


def composite(mask: torch.Tensor, rgb) -> tuple[torch.Tensor, torch.Tensor]:
    """A flat-coloured object on white: image [1,H,W,3] and alpha [1,H,W,1]."""
    alpha = mask.float()[None, ..., None]
    colour = torch.tensor(rgb, dtype=torch.float32)
    return alpha * colour + (1 - alpha), alpha


# ---- silhouettes, PSNR, SSIM -----------------------------------------------------------------------------------
def test_identical_renders_give_iou_one_and_the_psnr_cap():
    g = torch.Generator().manual_seed(0)
    img = torch.rand(3, 24, 24, 3, generator=g)
    alpha = (torch.rand(3, 24, 24, 1, generator=g) > 0.5).float()
    assert ev.silhouette_iou(alpha, alpha) == 1.0
    assert ev.psnr(img, img) == ev.PSNR_CAP == 100.0
    assert ev.psnr(img, img, cap=60.0) == 60.0
    assert ev.ssim(img, img) == pytest.approx(1.0, abs=1e-5)
    empty = torch.zeros(2, 8, 8, 1)
    assert ev.silhouette_iou(empty, empty) == 1.0  # nothing anywhere: agree perfectly


def test_psnr_of_a_known_uniform_error():
    a = torch.full((2, 8, 8, 3), 0.5)
    assert ev.psnr(a, a + 0.1) == pytest.approx(20.0, abs=1e-5)  # MSE 0.01 → 20 dB
    assert ev.psnr(a, a + 0.01) == pytest.approx(40.0, abs=1e-4)


@pytest.mark.parametrize("k", [1, 3, 6])
def test_square_shifted_by_k_pixels_gives_exact_iou(k):
    s = 20
    a = torch.zeros(1, 40, 40, 1)
    b = torch.zeros(1, 40, 40, 1)
    a[0, 10:10 + s, 8:8 + s] = 1
    b[0, 10:10 + s, 8 + k:8 + k + s] = 1
    assert ev.silhouette_iou(a, b) == pytest.approx((s - k) / (s + k), abs=1e-12)


@pytest.mark.parametrize("k", [2, 5, 10])
def test_disc_shifted_by_k_pixels_gives_the_lens_iou(k):
    r = 20.0
    a = disc(64, 80, 30, 32, r)
    b = disc(64, 80, 30 + k, 32, r)
    counted = (a & b).sum().item() / (a | b).sum().item()
    iou = ev.silhouette_iou(a[None, ..., None].float(), b[None, ..., None].float())
    assert iou == pytest.approx(counted, abs=1e-12)  # the metric counts pixels …
    assert iou == pytest.approx(lens_iou(r, k), abs=0.01)  # … and agrees with geometry


def test_iou_averages_per_view():
    full, empty = torch.ones(1, 4, 4, 1), torch.zeros(1, 4, 4, 1)
    assert ev.silhouette_iou(torch.cat([full, full]), torch.cat([full, empty])) == 0.5


# ---- colour and saturation ------------------------------------------------------------------------------------
def test_known_colour_shift_gives_its_mean_absolute_error():
    mask = disc(32, 32, 16, 16, 10)
    truth, alpha = composite(mask, (0.5, 0.4, 0.3))
    shifted, _ = composite(mask, (0.6, 0.2, 0.3))  # |Δ| = (0.1, 0.2, 0.0) → mean 0.1
    shifted[0, 0, 0] = torch.tensor([0.0, 0.0, 0.0])  # a background pixel: outside the mask, must not count
    fg = alpha[..., 0] > 0.5
    assert ev.mean_color_error(shifted, truth, fg) == pytest.approx(0.1, abs=1e-6)
    assert ev.mean_color_error(truth, truth, fg) == 0.0
    assert math.isnan(ev.mean_color_error(shifted, truth, torch.zeros_like(fg)))


def test_saturation_increase_gives_positive_error_of_the_right_size():
    mask = disc(32, 32, 16, 16, 10)
    truth, alpha = composite(mask, (0.8, 0.4, 0.4))  # S = 0.5
    vivid, _ = composite(mask, (0.8, 0.2, 0.2))  # S = 0.75
    fg = alpha > 0.5
    assert ev.saturation_error(vivid, truth, fg) == pytest.approx(0.25, abs=1e-6)
    assert ev.saturation_error(truth, vivid, fg) == pytest.approx(-0.25, abs=1e-6)  # washed out → negative
    assert ev.mean_saturation(vivid, fg) == pytest.approx(0.75, abs=1e-6)
    assert ev.saturation(torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])).tolist() == [0, 0, 1]


# ---- attribute accuracy (fake classifier and grammar) ---------------------------------------------------------
@dataclass
class _Obj:
    shape: str
    color: str


@dataclass
class _Scene:
    objects: list
    relation: str | None = None


class _ColourClassifier(torch.nn.Module):
    """Colour id = argmax channel of the mean image (0 red, 1 green, 2 blue); shape always 'cube'."""

    resolution = 16

    def classify(self, images):
        assert images.shape[1:] == (3, 16, 16)  # channels-first at the classifier's own size
        return {"color": images.mean((2, 3)).argmax(1), "shape": torch.zeros(len(images), dtype=torch.long)}

    def features(self, images):
        return torch.cat([images.mean((2, 3)), images.std((2, 3))], 1)


@pytest.fixture
def fake_grammar(monkeypatch):
    grammar = types.ModuleType("dreammapping.toyworld.grammar")
    grammar.COLORS = {"red": (1, 0, 0), "green": (0, 1, 0), "blue": (0, 0, 1)}
    grammar.SHAPES = ("cube", "sphere")
    grammar.RELATIONS = ("on top of", "next to")
    monkeypatch.setattr(ev, "grammar", grammar)  # parse (evaluate_gaussians)
    monkeypatch.setattr(em, "grammar", grammar)  # colour / shape names (attribute_accuracy)
    return grammar


def test_attribute_accuracy_counts_views(fake_grammar):
    views = torch.zeros(4, 8, 8, 3)
    views[:3, ..., 0] = 1.0  # three red views
    views[3, ..., 2] = 1.0  # one blue view
    acc = ev.attribute_accuracy(_ColourClassifier(), views, _Scene([_Obj("cube", "red")]))
    assert acc == {"color": 0.75, "shape": 1.0, "all": 0.75}


class _FixedClassifier(torch.nn.Module):
    """Returns the predictions it was built with (ids as the real classifier's heads, −1 = none)."""

    color_names = ["red", "green", "blue"]
    shape_names = ["cube", "sphere"]

    def __init__(self, **pred):
        super().__init__()
        self.pred = {k: torch.tensor(v) for k, v in pred.items()}

    def classify(self, images):
        return self.pred


def test_attribute_accuracy_of_two_object_scenes_is_order_free(fake_grammar):
    scene = _Scene([_Obj("cube", "red"), _Obj("sphere", "blue")], relation="on top of")
    clf = _FixedClassifier(color=[0, 2, 0, 1], shape=[0, 1, 0, 0], second_color=[2, 0, 2, 2],
                           second_shape=[1, 0, 1, 1], relation=[0, 0, 1, 0])
    # view 0 exact; view 1 swapped order (still right); view 2 wrong relation; view 3 wrong colour
    acc = ev.attribute_accuracy(clf, torch.zeros(4, 8, 8, 3), scene)
    assert acc == {"color": 0.75, "shape": 1.0, "all": 0.5}
    # A lone object predicted as a pair is not "all" right.
    alone = _FixedClassifier(color=[0, 0], shape=[0, 0], second_color=[-1, 2], second_shape=[-1, 1])
    assert ev.attribute_accuracy(alone, torch.zeros(2, 8, 8, 3), _Scene([_Obj("cube", "red")]))["all"] == 0.5


def test_attribute_accuracy_runs_the_real_classifier_architecture():
    classifier = pytest.importorskip("dreammapping.toyworld.classifier")
    grammar = pytest.importorskip("dreammapping.toyworld.grammar")
    torch.manual_seed(0)
    clf = classifier.AttributeClassifier(list(grammar.COLORS), list(grammar.SHAPES), width=8, feature_dim=16).eval()
    scene = grammar.parse("a red cube on top of a blue sphere")
    acc = ev.attribute_accuracy(clf, torch.rand(3, 48, 48, 3), scene)
    assert set(acc) == {"color", "shape", "all"} and all(0.0 <= v <= 1.0 for v in acc.values())
    assert math.isfinite(ev.classifier_fid(clf, torch.rand(5, 48, 48, 3), torch.rand(6, 32, 32, 3)))


# ---- Fréchet distance -----------------------------------------------------------------------------------------
def test_frechet_distance_of_known_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])  # ||Δ||² = 5
    d1, d2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])  # diagonal: Σ (√a − √b)² = 1 + 1 + 4
    assert ev.frechet_distance(mu1, np.diag(d1), mu2, np.diag(d2)) == pytest.approx(11.0, abs=1e-9)
    # A rotated pair: the distance is invariant under a common rotation of both Gaussians.
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))
    rotated = ev.frechet_distance(q @ mu1, q @ np.diag(d1) @ q.T, q @ mu2, q @ np.diag(d2) @ q.T)
    assert rotated == pytest.approx(11.0, abs=1e-6)
    s = np.array([[2.0, 0.5], [0.5, 1.0]])
    assert ev.frechet_distance(np.zeros(2), s, np.zeros(2), s) == pytest.approx(0.0, abs=1e-9)
    assert ev.frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), 4 * np.eye(2)) == pytest.approx(2.0, abs=1e-9)


def test_fid_from_samples_approaches_the_known_answer():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(20000, 2, generator=g, dtype=torch.float64)
    b = torch.randn(20000, 2, generator=g, dtype=torch.float64) * 2.0 + torch.tensor([3.0, 0.0], dtype=torch.float64)
    # ||Δμ||² = 9, covariance term 2·(1 + 4 − 2·2) = 2 → 11
    assert ev.fid_from_features(a, b) == pytest.approx(11.0, rel=0.03)
    # Fewer samples than dimensions: singular covariances still give a finite value.
    assert math.isfinite(ev.fid_from_features(torch.randn(4, 16, generator=g), torch.randn(5, 16, generator=g)))


def test_classifier_fid_is_zero_on_identical_sets_and_grows_with_colour_change():
    g = torch.Generator().manual_seed(1)
    views = torch.rand(12, 16, 16, 3, generator=g)
    clf = _ColourClassifier()
    assert ev.classifier_fid(clf, views, views) == pytest.approx(0.0, abs=1e-6)
    assert ev.classifier_fid(clf, views, (views * 0.5)) > ev.classifier_fid(clf, views, views * 0.9)


# ---- CLIP -----------------------------------------------------------------------------------------------------
def test_clip_score_from_embeddings_is_100_cosine():
    t = torch.tensor([[1.0, 0.0, 0.0]])
    imgs = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])
    assert ev.clip_score_from_embeddings(imgs[:1], t) == pytest.approx(100.0)
    assert ev.clip_score_from_embeddings(imgs[1:2], t) == pytest.approx(0.0)
    assert ev.clip_score_from_embeddings(imgs[2:], t) == pytest.approx(-100.0)
    assert ev.clip_score_from_embeddings(imgs, t) == pytest.approx(0.0)  # mean over views


class _ColourWordEncoder:
    """Image embedding = mean RGB; text embedding = the RGB of the colour word: a CLIP whose answer we know."""

    name = "colour-words"
    words = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0)}

    def encode_images(self, images):
        assert images.shape[1] == 3  # channels-first at the model's edge
        return images.mean((2, 3))

    def encode_text(self, prompts):
        return torch.tensor([next(v for k, v in self.words.items() if k in p) for p in prompts])


def test_clip_score_is_higher_for_the_matching_prompt():
    views = torch.zeros(4, 8, 8, 3)
    views[..., 0] = 0.9
    views[..., 1:] = 0.1
    enc = _ColourWordEncoder()
    assert ev.clip_score(views, "a red cube", enc) > ev.clip_score(views, "a blue cube", enc)
    assert -100 <= ev.clip_score(views, "a blue cube", enc) <= 100


@pytest.fixture(scope="module")
def tiny_clip():
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<pad>", "<bos>", "<eos>", "<unk>", "a", "red", "blue", "cube", "sphere", "on", "top", "of"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                                     bos_token="<bos>", eos_token="<eos>")
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=len(words), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=16, pad_token_id=0, bos_token_id=1,
                         eos_token_id=2),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    torch.manual_seed(0)
    return ev.HFClipEncoder(transformers.CLIPModel(config).eval(), tokenizer, name="tiny")


def test_clip_path_runs_on_a_tiny_random_clip(tiny_clip):
    g = torch.Generator().manual_seed(0)
    views = torch.rand(3, 48, 48, 3, generator=g)  # any size: resized to the model's 32 px
    score = ev.clip_score(views, "a red cube", tiny_clip)
    assert math.isfinite(score) and -100.0 <= score <= 100.0
    assert tiny_clip.encode_images(ev.to_channels_first(views)).shape == (3, 16)
    assert tiny_clip.encode_text(["a red cube", "a blue sphere"]).shape == (2, 16)
    # The score is the shared scoring function applied to the model's embeddings.
    with torch.no_grad():
        expected = ev.clip_score_from_embeddings(tiny_clip.encode_images(ev.to_channels_first(views)),
                                                 tiny_clip.encode_text(["a red cube"]))
    assert score == pytest.approx(expected, abs=1e-9)


# ---- skipping -------------------------------------------------------------------------------------------------
def test_load_clip_without_open_clip_or_cached_weights_is_unavailable(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "open_clip", None)  # import open_clip → ImportError
    monkeypatch.setitem(ev.HF_CLIP_REPOS, "ViT-L-14", "dreammapping-test/no-such-clip")
    with pytest.raises(ev.MetricUnavailable) as info:
        ev.load_clip("ViT-L-14", "openai")
    reason = str(info.value)
    assert "open_clip not installed" in reason and "not in the local cache" in reason and "\n" not in reason


def test_load_clip_with_open_clip_but_no_weights_never_downloads(monkeypatch):
    fake = types.ModuleType("open_clip")
    fake.get_pretrained_cfg = lambda name, tag: {"hf_hub": "dreammapping-test/no-such-openclip/"}

    def create(*args, **kwargs):
        raise AssertionError("must not try to load (and so download) missing weights")

    fake.create_model_and_transforms = create
    monkeypatch.setitem(sys.modules, "open_clip", fake)
    monkeypatch.delitem(ev.HF_CLIP_REPOS, "ViT-bigG-14")
    with pytest.raises(ev.MetricUnavailable, match="ViT-bigG-14/laion2b_s39b_b160k not in the local cache"):
        ev.load_clip("ViT-bigG-14", "laion2b_s39b_b160k")


def test_inception_fid_is_unavailable_without_its_weights(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(ev.MetricUnavailable):
        ev.inception_fid_available()


# ---- evaluate_run end to end on a fake world (renderer, ply, grammar, classifier, prior all stubbed) ----------
@dataclass
class _FakeOut:
    rgb: torch.Tensor
    alpha: torch.Tensor


def _fake_world(monkeypatch, fake_grammar, result_rgb, truth_rgb, shift):
    """A 'red cube' seen as a disc: the result is the same disc shifted by `shift` px with colour `result_rgb`."""

    def draw(cameras, rgb, dx):
        R = cameras.width
        m = disc(R, R, R / 2 + dx, R / 2, R / 4)
        img, a = composite(m, rgb)
        return img.expand(len(cameras), -1, -1, -1), a.expand(len(cameras), -1, -1, -1)

    monkeypatch.setattr(ev, "rasterize", lambda g, cameras, background=None, **kw: _FakeOut(*draw(cameras, result_rgb, shift)))
    monkeypatch.setattr(ev, "load_ply", lambda path, device="cpu": "gaussians")
    monkeypatch.setattr(ev, "render_scenes", lambda scenes, cameras: draw(cameras, truth_rgb, 0))
    monkeypatch.setattr(em, "AttributeClassifier", types.SimpleNamespace(from_pretrained=lambda path=None: _ColourClassifier()))

    def parse(prompt):
        if "red cube" not in prompt:
            raise ValueError(f"unknown words in {prompt!r}")
        return _Scene([_Obj("cube", "red")])

    fake_grammar.parse = parse

    class _Prior:
        device = "cpu"

        def sample(self, prompts, num_steps=30, scheduler=None, generator=None, **kw):
            assert num_steps == 50 and scheduler.__name__ == "DPMSolverMultistepScheduler"
            return torch.rand(len(prompts), 3, 16, 16, generator=generator)

    monkeypatch.setattr(ev.ModelCache, "prior", lambda self, prior_id, device: _Prior())
    monkeypatch.setattr(ev, "MODELS", ev.ModelCache())  # nothing loaded by earlier tests

    def load_clip(name, tag, device="cpu"):
        if name == "ViT-L-14":
            return _ColourWordEncoder()
        raise ev.MetricUnavailable(f"open_clip weights {name}/{tag} not in the local cache")

    monkeypatch.setattr(em, "load_clip", load_clip)  # what ModelCache.clip calls


def _write_run(path, prompt):
    path.mkdir()
    (path / "gaussians.ply").write_bytes(b"ply\n")  # the fake load_ply never reads it
    (path / "config.yaml").write_text(f"prompt: {prompt}\nprior: embedded\ntrain:\n  iterations: 10\n")
    return path


def test_evaluate_run_computes_what_it_can_and_skips_the_rest_with_reasons(monkeypatch, fake_grammar, tmp_path):
    _fake_world(monkeypatch, fake_grammar, result_rgb=(0.9, 0.1, 0.1), truth_rgb=(0.8, 0.4, 0.4), shift=2)
    run = _write_run(tmp_path / "run", "a red cube")
    result = ev.evaluate_run(run, resolution=32, num_views=4, fid_reference=6)
    m, skipped = result["metrics"], result["skipped"]
    assert json.loads((run / "eval.json").read_text())["metrics"] == pytest.approx(m)
    counted = (disc(32, 32, 18, 16, 8) & disc(32, 32, 16, 16, 8)).sum() / (disc(32, 32, 18, 16, 8) | disc(32, 32, 16, 16, 8)).sum()
    assert m["iou"] == pytest.approx(float(counted))
    assert m["color_error"] == pytest.approx((0.1 + 0.3 + 0.3) / 3, abs=1e-6)
    assert m["saturation_error"] == pytest.approx((0.8 / 0.9) - 0.5, abs=1e-6)  # over-saturated → positive
    assert 0 < m["psnr"] < ev.PSNR_CAP and 0 < m["ssim"] < 1
    assert m["attr_color"] == m["attr_shape"] == m["attr_all"] == 1.0
    assert m["clip_ViT-L-14"] > 50  # the colour-word encoder: a red disc on white against "red"
    assert "clip_ViT-bigG-14" in skipped and "not in the local cache" in skipped["clip_ViT-bigG-14"]
    assert "fid_inception" in skipped or "fid_inception" in m
    assert math.isfinite(m["fid_classifier"]) and math.isfinite(m["fid_classifier_gt"])
    for name, reason in skipped.items():
        assert reason and "\n" not in reason, name


def test_evaluate_run_on_a_prompt_outside_the_toy_world_skips_ground_truth(monkeypatch, fake_grammar, tmp_path):
    _fake_world(monkeypatch, fake_grammar, result_rgb=(0.9, 0.1, 0.1), truth_rgb=(0.8, 0.4, 0.4), shift=0)
    run = _write_run(tmp_path / "run", "a photo of a red corgi")
    result = ev.evaluate_run(run, resolution=32, num_views=4, fid=False)
    for name in ("iou", "psnr", "ssim", "color_error", "saturation_error", "attr_all"):
        assert name in result["skipped"] and name not in result["metrics"]
    assert "does not parse" in result["skipped"]["iou"]
    assert "clip_ViT-L-14" in result["metrics"] and "mean_saturation" in result["metrics"]


def test_evaluate_run_leaves_the_callers_options_alone(monkeypatch, fake_grammar, tmp_path):
    _fake_world(monkeypatch, fake_grammar, result_rgb=(0.9, 0.1, 0.1), truth_rgb=(0.8, 0.4, 0.4), shift=0)
    options = ev.EvalOptions(resolution=32, num_views=2, fid=False)
    result = ev.evaluate_run(_write_run(tmp_path / "run", "a red cube"), options, clip=False)
    assert options == ev.EvalOptions(resolution=32, num_views=2, fid=False)  # the override applied to a copy only
    assert result["settings"]["clip"] is False and result["settings"]["resolution"] == 32
    assert "disabled" in result["skipped"]["clip_ViT-L-14"]


def test_read_run_config_reads_what_generate_writes_and_refuses_anything_else(tmp_path):
    from dreammapping.train import GenerateConfig, save_yaml_config

    run = tmp_path / "run"
    run.mkdir()
    save_yaml_config(run / "config.yaml", GenerateConfig(prompt="a blue cone", prior="/some/folder"))
    info = ev.read_run_config(run)
    assert (info.prompt, info.prior) == ("a blue cone", "/some/folder") and info.config["method"] == "vdm"
    (run / "config.yaml").write_text("prompt: a red cube\n")  # a run from before `prior` was recorded
    assert ev.read_run_config(run).prior == "embedded"
    for text, words in (("train:\n  prompt: nested\n", "no prompt"), ("text: a red cube\n", "no prompt"),
                        ("- a list\n", "not a run config"), ("prompt: [unclosed\n", "cannot read"),
                        ("prompt: a red cube\nprior:\n  id_or_folder: x\n", "prior")):
        (run / "config.yaml").write_text(text)
        with pytest.raises(ValueError, match=words) as error:
            ev.read_run_config(run)
        assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="no config.yaml"):
        ev.read_run_config(tmp_path)


def test_cli_evaluate_prints_a_table_and_one_line_errors(monkeypatch, fake_grammar, tmp_path, capsys):
    _fake_world(monkeypatch, fake_grammar, result_rgb=(0.8, 0.4, 0.4), truth_rgb=(0.8, 0.4, 0.4), shift=0)
    good = _write_run(tmp_path / "good", "a red cube")
    (tmp_path / "no_ply").mkdir()
    code = ev.cli_evaluate([str(good), str(tmp_path / "no_ply"), str(tmp_path / "missing"),
                            "--resolution", "32", "--views", "2", "--no-fid", "--device", "cpu"])
    out, err = capsys.readouterr()
    assert code == 1
    assert "/good | a red cube | 1.000 | 100.00 |" in out
    assert (good / "eval.json").is_file()
    assert err.count("\n") == 2 and "no gaussians.ply" in err


# ---- evaluate_run with the real renderer, .ply and toy world ------------------------------------------------
def test_evaluate_run_on_splats_of_the_true_scene(tmp_path):
    for module in ("dreammapping.render", "dreammapping.export", "dreammapping.toyworld.sdf"):
        pytest.importorskip(module)
    from dreammapping.export import save_ply
    from dreammapping.gaussians import from_points
    from dreammapping.toyworld import grammar
    from dreammapping.toyworld.sdf import color_at, occupancy

    scene = grammar.parse("a red cube")
    g = torch.Generator().manual_seed(0)
    points = torch.rand(6000, 3, generator=g) * 2.2 - 1.1
    points = points[occupancy(scene, points)][:800]
    splats = from_points(points, color_at(scene, points), opacity=0.95, scale=0.05)
    ious = []
    for name, offset in (("aligned", 0.0), ("moved", 0.4)):
        run = tmp_path / name
        run.mkdir()
        moved = type(splats)(**{**splats.params(), "means": splats.means + torch.tensor([0.0, offset, 0.0])})
        save_ply(run / "gaussians.ply", moved)
        (run / "config.yaml").write_text("prompt: a red cube\nprior: embedded\n")
        result = ev.evaluate_run(run, resolution=32, num_views=4, fid=False, clip=False)
        m = result["metrics"]
        for name_ in ("attr_color", "attr_all"):  # computed with shipped weights, else skipped with the reason
            assert name_ in m or "classifier" in result["skipped"][name_]
        assert 10 < m["psnr"] < ev.PSNR_CAP and 0 < m["ssim"] <= 1 and m["color_error"] < 0.3
        ious.append(m["iou"])
    assert ious[0] > 0.6 and ious[1] < ious[0] - 0.1


# ---- benchmarks/compare_methods.py: aggregation, table, chart on synthetic records ----------------------------
def _compare_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "compare_methods.py"
    if not path.is_file():
        pytest.skip("benchmarks/compare_methods.py not present")
    spec = importlib.util.spec_from_file_location("compare_methods", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("compare_methods", module)  # dataclasses look their module up while being built
    spec.loader.exec_module(sys.modules["compare_methods"])
    module = sys.modules["compare_methods"]
    return module


def test_compare_methods_summarises_ranks_and_draws(tmp_path):
    cm = _compare_module()
    records = []
    for seed in (0, 1):
        for prompt in ("a red cube", "a blue cone"):
            records.append({"prompt": prompt, "variant": "sds", "seed": seed, "sec_per_it": 0.10,
                            "metrics": {"iou": 0.5 + 0.1 * seed, "saturation_error": 0.20, "color_error": 0.2},
                            "skipped": {"clip_ViT-L-14": "open_clip not installed"}, "run_dir": "x"})
            records.append({"prompt": prompt, "variant": "vdm+dca300", "seed": seed, "sec_per_it": 0.12,
                            "metrics": {"iou": 0.45 + 0.1 * seed, "saturation_error": -0.05, "color_error": 0.1},
                            "skipped": {}, "run_dir": "x"})
    cm.add_relative_time(records)
    table = cm.summarise(records, ["sds", "vdm+dca300"])
    mean, sd, n = table["sds"]["iou"]
    assert (mean, n) == (pytest.approx(0.55), 4) and sd == pytest.approx(statistics_stdev([0.5, 0.5, 0.6, 0.6]))
    assert table["vdm+dca300"]["sec_per_it_rel"][0] == pytest.approx(1.2)
    best = cm.winners(table)
    assert best["iou"] == ["sds"] and best["saturation_error"] == ["vdm+dca300"]
    assert best["color_error"] == ["vdm+dca300"]
    tied = cm.winners({"a": {"attr_all": (0.5, 0.1, 2)}, "b": {"attr_all": (0.5, 0.0, 2)}})
    assert tied["attr_all"] == ["a", "b"]
    note = "\n".join(cm.closing_note(table, best))
    assert "Worse: silhouette IoU" in note  # 0.05 apart, standard error of the difference 0.041
    assert "Better beyond one standard error: colour error" in note
    plan = cm.Plan(["sds", "vdm+dca300"], ["a red cube", "a blue cone"], [0, 1], 10, tmp_path, tmp_path)
    cm.write_markdown(tmp_path / "t.md", plan, records, "c.png", "g.png")
    text = (tmp_path / "t.md").read_text()
    assert "| `sds` |" in text and "**0.550 ± 0.058**" in text and "open_clip not installed" in text
    cm.draw_chart(tmp_path / "c.png", table)
    from PIL import Image

    assert Image.open(tmp_path / "c.png").size[0] > 400


def statistics_stdev(values):
    import statistics

    return statistics.stdev(values)


def test_eval_json_survives_a_failed_write(monkeypatch, fake_grammar, tmp_path):
    """eval.json goes through the atomic writer at its call site: a failed final rename (a full disk) keeps the old."""

    _fake_world(monkeypatch, fake_grammar, result_rgb=(0.9, 0.1, 0.1), truth_rgb=(0.8, 0.4, 0.4), shift=2)
    run = _write_run(tmp_path / "run", "a red cube")
    ev.evaluate_run(run, resolution=32, num_views=2, fid=False)
    old = (run / "eval.json").read_bytes()
    disk_full_at(monkeypatch, "eval.json")
    with pytest.raises(OSError):
        ev.evaluate_run(run, resolution=32, num_views=3, fid=False)
    assert (run / "eval.json").read_bytes() == old
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "eval.json", "gaussians.ply"]


def test_cli_evaluate_checks_its_values_once_up_front(tmp_path, capsys):
    for flags in (["--views", "0"], ["--resolution", "0"], ["--device", "tpu"], ["--fid-reference", "0"]):
        assert ev.cli_evaluate([str(tmp_path), *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and err.startswith("dreammapping evaluate:") and flags[0].lstrip("-")[:4] in err, err
    assert ev.cli_evaluate([str(tmp_path), "--views", "x"]) == 2  # argparse's own error, returned not raised

# ---- detail (edge energy, edge F-score) and noise (high-frequency residual) on known answers -------------------
def shaded_truth(R: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    """A grey 'cube' on white, two faces of different shades plus a vertical shading ramp: image [2,R,R,3] and
    alpha [2,R,R,1] (the second view mirrored), mid-grey so that ±noise is never clamped."""
    y, x = torch.meshgrid(torch.arange(R) + 0.5, torch.arange(R) + 0.5, indexing="ij")
    inside = (x > R * 0.2) & (x < R * 0.8) & (y > R * 0.2) & (y < R * 0.8)
    shade = torch.where(x < R / 2, torch.full_like(x, 0.35), torch.full_like(x, 0.6)) + 0.1 * (y / R)
    img = torch.where(inside, shade, torch.ones_like(shade))[..., None].expand(R, R, 3)
    alpha = inside.float()[..., None]
    return torch.stack([img, img.flip(1)]), torch.stack([alpha, alpha.flip(1)])


def blurred(img: torch.Tensor, sigma: float) -> torch.Tensor:
    from scipy import ndimage

    return torch.tensor(ndimage.gaussian_filter(img.double().numpy(), sigma=(0, sigma, sigma, 0), mode="nearest")).float()


def test_the_truth_itself_scores_the_ideal_detail_and_noise():
    truth, alpha = shaded_truth()
    assert ev.edge_energy_ratio(truth, truth) == pytest.approx(1.0)
    assert ev.edge_f_score(truth, truth) == 1.0
    assert ev.high_frequency_noise(truth, truth, alpha) == 0.0


def test_a_blurred_truth_scores_lower_sharpness_the_more_it_is_blurred():
    truth, alpha = shaded_truth()
    soft, softer = blurred(truth, 0.7), blurred(truth, 1.5)
    assert ev.edge_energy_ratio(softer, truth) < ev.edge_energy_ratio(soft, truth) < 0.9
    assert ev.edge_f_score(softer, truth) < 1.0
    # blur loses the inner face edge, which leaves some high-frequency residual, but far less than a speckle of
    # std 0.05 (≈ 0.044, next test)
    assert ev.high_frequency_noise(soft, truth, alpha) < 0.02


def test_a_speckled_truth_scores_the_known_high_frequency_noise():
    """i.i.d. grey speckle of std s inside the silhouette: hp = (δ − G_σ) * n has RMS s·sqrt(Σ(δ − g)²), with g
    the filter's own kernel (found by filtering a unit impulse)."""
    from scipy import ndimage

    truth, alpha = shaded_truth(96)
    s = 0.05
    g = torch.Generator().manual_seed(0)
    noise = s * torch.randn(truth.shape[:3], generator=g)[..., None] * alpha  # the same on R, G, B: luma = noise
    speckled = truth + noise
    impulse = np.zeros((1, 21, 21))
    impulse[0, 10, 10] = 1.0
    kernel = impulse - ndimage.gaussian_filter(impulse, sigma=(0, ev.NOISE_SIGMA, ev.NOISE_SIGMA))
    expected = s * float(np.sqrt((kernel ** 2).sum()))  # ≈ 0.87 s for σ = 1 px
    assert ev.high_frequency_noise(speckled, truth, alpha) == pytest.approx(expected, rel=0.05)
    assert ev.edge_f_score(speckled, truth) < 1.0  # speckle adds edges that the truth does not have
    assert ev.edge_energy_ratio(speckled, truth) > 1.0


def test_noise_ignores_a_smooth_colour_shift_and_a_one_pixel_silhouette_shift():
    truth, alpha = shaded_truth()
    # a flat shift inside: only the Gaussian tail of the step at the (eroded) border leaks in, ~0.5 % of speckle
    assert ev.high_frequency_noise((truth - 0.1 * alpha).clamp(0, 1), truth, alpha) < 1e-3
    flat, flat_alpha = composite(disc(48, 48, 24, 24, 14), (0.5, 0.5, 0.5))
    shifted = flat.roll(1, dims=2)  # a silhouette one pixel off: the border is eroded away, only a tail leaks in
    assert ev.high_frequency_noise(shifted, flat, flat_alpha) < 0.01


# ---- text-to-2D: statistics of an image without a pose, on known answers -----------------------------------------
def test_foreground_mask_finds_a_flat_object_on_white_and_its_mean_colour():
    img, alpha = composite(disc(32, 32, 16, 16, 9), (0.9, 0.2, 0.1))
    assert torch.equal(ev.foreground_mask(img), alpha)
    assert ev.mean_color(img, alpha).tolist() == pytest.approx([0.9, 0.2, 0.1])
    # a pale object closer to white than the threshold counts as background
    pale, _ = composite(disc(32, 32, 16, 16, 9), (0.95, 0.95, 0.95))
    assert float(ev.foreground_mask(pale).sum()) == 0.0 and bool(ev.mean_color(pale, ev.foreground_mask(pale)).isnan().all())


def test_mean_edge_energy_is_per_image_and_falls_with_blur():
    truth, _ = shaded_truth()
    one = ev.mean_edge_energy(truth[:1])
    assert ev.mean_edge_energy(truth[[0, 0, 0]]) == pytest.approx(one)  # a mean over images, not a sum
    # for one image against one image it is the edge energy ratio
    assert one / ev.mean_edge_energy(truth[1:]) == pytest.approx(ev.edge_energy_ratio(truth[:1], truth[1:]))
    assert ev.mean_edge_energy(blurred(truth, 1.5)) < ev.mean_edge_energy(blurred(truth, 0.7)) < one


def test_interior_high_frequency_is_zero_for_a_flat_object_and_the_known_value_for_speckle():
    from scipy import ndimage

    flat, alpha = composite(disc(96, 96, 48, 48, 40), (0.5, 0.5, 0.5))
    # 0 up to the Gaussian tail of the silhouette's step past the 2 px erosion (~0.5 % of the speckle below)
    assert ev.interior_high_frequency(flat, alpha) < 1e-3
    s = 0.05
    noise = s * torch.randn(flat.shape[:3], generator=torch.Generator().manual_seed(0))[..., None] * alpha
    impulse = np.zeros((1, 21, 21))
    impulse[0, 10, 10] = 1.0
    kernel = impulse - ndimage.gaussian_filter(impulse, sigma=(0, ev.NOISE_SIGMA, ev.NOISE_SIGMA))
    expected = s * float(np.sqrt((kernel ** 2).sum()))
    assert ev.interior_high_frequency(flat + noise, alpha) == pytest.approx(expected, rel=0.05)
    # a shaded object has some of its own (the inner face edge), less than the speckle
    truth, talpha = shaded_truth(96)
    assert 0.0 < ev.interior_high_frequency(truth, talpha) < expected


def test_evaluate_run_reports_the_detail_and_noise_metrics(monkeypatch, fake_grammar, tmp_path):
    _fake_world(monkeypatch, fake_grammar, result_rgb=(0.8, 0.4, 0.4), truth_rgb=(0.8, 0.4, 0.4), shift=0)
    m = ev.evaluate_run(_write_run(tmp_path / "run", "a red cube"), resolution=32, num_views=2, fid=False)["metrics"]
    assert m["edge_energy_ratio"] == pytest.approx(1.0) and m["edge_f_score"] == 1.0 and m["hf_noise"] == 0.0


def test_num_views_zero_computes_only_the_canonical_metrics(monkeypatch, fake_grammar, tmp_path):
    _fake_world(monkeypatch, fake_grammar, result_rgb=(0.8, 0.4, 0.4), truth_rgb=(0.8, 0.4, 0.4), shift=0)
    m, skipped = ev.evaluate_gaussians("gaussians", "a red cube", "embedded",
                                       ev.EvalOptions(resolution=32, num_views=0))
    assert m["iou"] == 1.0 and "attr_all" not in m and "fid_classifier" not in m
    assert "num_views=0" in skipped["attr_all"] and "num_views=0" in skipped["fid_classifier"]


# ---- the FID reference cache -----------------------------------------------------------------------------------
def _counting_sampler(n=5, seed=0):
    calls = []

    def sample():
        calls.append(1)
        return torch.rand(n, 8, 8, 3, generator=torch.Generator().manual_seed(seed + len(calls)))

    return sample, calls


def test_reference_cache_reuses_a_stored_sample_and_keys_on_the_settings():
    settings = {"prompt": "a red cube", "n": 5, "steps": 50}
    sample, calls = _counting_sampler()
    first = ev.cached_reference(settings, sample)
    again = ev.cached_reference(dict(settings), sample)
    assert len(calls) == 1 and torch.equal(first, again)
    files = list(ev.reference_cache_dir().glob("*.safetensors"))
    assert len(files) == 1 and not list(ev.reference_cache_dir().glob("*.tmp"))
    ev.cached_reference({**settings, "steps": 20}, sample)  # other settings: another sample, another file
    assert len(calls) == 2 and len(list(ev.reference_cache_dir().glob("*.safetensors"))) == 2


@pytest.mark.parametrize("damage", ["garbage", "truncated", "other_settings", "out_of_range"])
def test_a_damaged_reference_cache_file_is_recomputed_not_trusted(damage):
    from safetensors.torch import save_file

    settings = {"prompt": "a red cube", "n": 5}
    sample, calls = _counting_sampler()
    good = ev.cached_reference(settings, sample)
    path = next(ev.reference_cache_dir().glob("*.safetensors"))
    if damage == "garbage":
        path.write_bytes(b"\x00not a safetensors file")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:40])
    elif damage == "other_settings":
        save_file({"images": torch.zeros(5, 8, 8, 3)}, str(path), metadata={"settings": '{"prompt": "a blue cone"}'})
    else:
        save_file({"images": torch.full((5, 8, 8, 3), 7.0)}, str(path),
                  metadata={"settings": json.dumps(settings, sort_keys=True)})
    fresh = ev.cached_reference(settings, sample)
    assert len(calls) == 2 and not torch.equal(fresh, good)  # sampled again (the sampler's next draw)
    assert torch.equal(ev.cached_reference(settings, sample), fresh) and len(calls) == 2  # and stored again


def test_evaluate_run_samples_the_prior_once_across_processes(monkeypatch, fake_grammar, tmp_path):
    """The in-memory cache is emptied between the calls (as in a new process): the second call reads the disk."""
    _fake_world(monkeypatch, fake_grammar, result_rgb=(0.9, 0.1, 0.1), truth_rgb=(0.8, 0.4, 0.4), shift=2)
    calls = []
    real = ev.prior_reference_images

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(ev, "prior_reference_images", counting)
    run = _write_run(tmp_path / "run", "a red cube")
    first = ev.evaluate_run(run, resolution=32, num_views=4, fid_reference=6)["metrics"]["fid_classifier"]
    ev.MODELS.references.clear()
    second = ev.evaluate_run(run, resolution=32, num_views=4, fid_reference=6)["metrics"]["fid_classifier"]
    assert len(calls) == 1 and second == pytest.approx(first)
    ev.MODELS.references.clear()
    ev.evaluate_run(run, resolution=32, num_views=4, fid_reference=6, fid_cache=False)
    assert len(calls) == 2  # --no-fid-cache samples again


def test_ssim_matches_torchmetrics():
    from torchmetrics.functional.image import structural_similarity_index_measure as tm_ssim

    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 32, 32, 3, generator=g)
    b = (a + 0.1 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    for x, y in ((a, b), (a, a.flip(2)), (b, b)):
        expected = float(tm_ssim(ev.to_channels_first(x), ev.to_channels_first(y), data_range=1.0))
        assert ev.ssim(x, y) == pytest.approx(expected, abs=1e-5)
