"""The attribute classifier: learns a tiny problem, saves/loads, fails in one line on bad files."""

from __future__ import annotations

import pytest
import torch

from dreammapping.toyworld.classifier import AttributeClassifier, augment, match_pair, train_classifier

COLORS = {"red": (0.9, 0.1, 0.1), "blue": (0.1, 0.2, 0.9), "green": (0.1, 0.7, 0.2)}
SHAPES = ("cube", "sphere")


def standin_batch(batch_size, resolution=16, generator=None, device="cpu", include_held_out=False):
    names = list(COLORS)
    c = torch.randint(len(names), (batch_size,), generator=generator)
    s = torch.randint(len(SHAPES), (batch_size,), generator=generator)
    yy, xx = torch.meshgrid(torch.arange(resolution), torch.arange(resolution), indexing="ij")
    r, mid = resolution / 3, (resolution - 1) / 2
    square = ((yy - mid).abs() <= r) & ((xx - mid).abs() <= r)
    diamond = (yy - mid).abs() + (xx - mid).abs() <= r
    imgs = torch.ones(batch_size, 3, resolution, resolution)
    for i in range(batch_size):
        imgs[i][:, square if s[i] == 0 else diamond] = torch.tensor(COLORS[names[c[i]]])[:, None]
    none = torch.full_like(c, -1)
    labels = {"color": c, "shape": s, "second_color": none, "second_shape": none, "relation": none}
    return imgs.to(device), [""] * batch_size, labels


def test_classifier_learns_a_tiny_problem_and_round_trips(tmp_path):
    path = tmp_path / "clf.safetensors"
    model, metrics = train_classifier(steps=40, batch=32, out_path=path, lr=3e-3, width=8, resolution=16,
                                      sample_fn=standin_batch, color_names=list(COLORS), shape_names=SHAPES,
                                      val_size=64, progress=False)
    assert metrics["val_color_acc"] >= 0.9 and metrics["val_shape_acc"] >= 0.8, metrics
    again = AttributeClassifier.from_pretrained(path)
    x, _, labels = standin_batch(16, 16, torch.Generator().manual_seed(5))
    pred = again.classify(x)
    assert torch.equal(pred["color"], model.classify(x)["color"])
    assert pred["second_color"].eq(-1).all() and pred["relation"].eq(-1).all()
    assert again.features(torch.rand(3, 3, 32, 32)).shape == (3, again.feature_dim)  # any size is resized
    assert again.color_names == list(COLORS) and again.shape_names == list(SHAPES)


def test_missing_or_corrupt_weights_one_line_error(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError) as e:
        AttributeClassifier.from_pretrained(missing)
    assert str(missing) in str(e.value) and "\n" not in str(e.value)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError) as e:
        AttributeClassifier.from_pretrained(bad)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)


def test_augment_keeps_range_and_shape():
    x = torch.rand(4, 3, 16, 16)
    y = augment(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1


def test_match_pair_accepts_either_order():
    pred = {"color": torch.tensor([1, 2]), "shape": torch.tensor([0, 0]), "second_color": torch.tensor([2, 2]),
            "second_shape": torch.tensor([1, 1])}
    m = match_pair(pred, torch.tensor([2, 2]), torch.tensor([1, 1]), torch.tensor([1, 1]), torch.tensor([0, 0]))
    assert m["both_ok"].tolist() == [True, False]
