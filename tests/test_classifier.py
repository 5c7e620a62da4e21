"""The attribute classifier: learns a tiny problem, saves/loads, fails in one line on bad files."""

from __future__ import annotations

import pytest
import torch

from dreammapping.toyworld.classifier import (
    FIRST_HEADS, SECOND_HEADS, AttributeClassifier, augment, match_pair, pair_loss, train_classifier,
    train_classifier_v2, v2_accuracy,
)

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


# --------------------------------------------------------------------------------------------------- classifier v2


def _tiny_v2(tmp, **kw):
    return train_classifier_v2(steps=4, batch=6, work_dir=tmp, seed=1, width=8, resolution=32, checkpoint_every=2,
                               val_size=12, progress=False, **kw)


def test_v2_training_runs_resumes_bit_for_bit_and_round_trips(tmp_path, monkeypatch):
    straight, metrics = _tiny_v2(tmp_path / "a", out_path=tmp_path / "v2.safetensors")
    for head in ("color", "shape", "pattern", "pattern_color", "second_pattern", "second_pattern_color", "relation"):
        assert 0.0 <= metrics[f"val_{head}_acc"] <= 1.0
    # interrupted after the step-2 checkpoint, then rerun: the same weights as the run that was never stopped
    import dreammapping.toyworld.classifier as clf

    calls, real = [], clf.pair_loss

    def failing(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(clf, "pair_loss", failing)
    with pytest.raises(KeyboardInterrupt):
        _tiny_v2(tmp_path / "b")
    monkeypatch.setattr(clf, "pair_loss", real)
    resumed, _ = _tiny_v2(tmp_path / "b")
    for (k, v), w in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(v, w, rtol=0, atol=0, msg=k)
    again = AttributeClassifier.from_pretrained(tmp_path / "v2.safetensors")
    assert again.pattern_names == ["stripes", "checks", "dots"] and "second_pattern" in again.heads
    x = torch.rand(3, 3, 32, 32)
    pred = again.classify(x)
    assert pred["pattern"].min() >= 0 and pred["pattern_color"].min() >= -1 and pred["second_pattern"].min() >= -1


def test_pair_loss_accepts_either_order_and_accuracy_matches_it():
    torch.manual_seed(0)
    nc, ns, npat = 4, 3, 3
    sizes = {"color": nc, "shape": ns, "pattern": npat + 1, "pattern_color": nc + 1, "second_color": nc + 1,
             "second_shape": ns + 1, "second_pattern": npat + 2, "second_pattern_color": nc + 1, "relation": 3}
    logits = {k: torch.randn(2, n) for k, n in sizes.items()}
    t = {"color": torch.tensor([0, 1]), "shape": torch.tensor([1, 2]), "pattern": torch.tensor([0, 3]),
         "pattern_color": torch.tensor([nc, 2]), "second_color": torch.tensor([2, 3]),
         "second_shape": torch.tensor([0, 0]), "second_pattern": torch.tensor([1, 0]),
         "second_pattern_color": torch.tensor([1, nc]), "relation": torch.tensor([2, 1])}
    swapped = dict(t)
    for a, b in zip(FIRST_HEADS, SECOND_HEADS):
        swapped[a], swapped[b] = t[b], t[a]
    torch.testing.assert_close(pair_loss(logits, t), pair_loss(logits, swapped))
    # a lone object may not be swapped: with relation 0 the loss is the plain one
    single = dict(t, relation=torch.tensor([0, 0]))
    ce = sum(torch.nn.functional.cross_entropy(logits[k], single[k]) for k in sizes)
    torch.testing.assert_close(pair_loss(logits, single), ce)
    # predicting a pair in the other order is right; predicting the wrong colour is not
    pred = {k: swapped[k].clone() for k in t}
    acc = v2_accuracy(pred, t)
    assert all(v == 1.0 for v in acc.values()), acc
    pred["color"] = pred["color"] + 1  # the object predicted first (the target's second) gets a wrong colour
    acc = v2_accuracy(pred, t)
    assert acc["second_color"] == 0.0 and acc["color"] == 1.0 and acc["pair_all"] == 0.0 and acc["shape"] == 1.0


def test_shipped_v1_classifier_still_loads_as_v1():
    model = AttributeClassifier.from_pretrained()
    assert model.pattern_names is None and "pattern" not in model.heads and len(model.color_names) == 10
    assert model.classify(torch.rand(2, 3, 32, 32))["color"].shape == (2,)
