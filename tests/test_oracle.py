"""The oracle: its targets are the truth over the run's backgrounds, it starts from the run's own initial
Gaussians, and fitting them photometrically brings the canonical views closer to the truth."""

from __future__ import annotations

import torch

from dreammapping import cameras as C
from dreammapping import metrics as M
from dreammapping.evaluate import _render
from dreammapping.oracle import fit_oracle, truth_views
from dreammapping.toyworld import grammar
from dreammapping.toyworld.sdf import render_scenes
from dreammapping.train import build_config


def test_truth_views_put_the_truth_over_each_views_background():
    scene = grammar.parse("a red cube")
    cams = C.canonical_views(16, 16)
    rgb, alpha = render_scenes([scene], cams)
    white = truth_views(scene, cams, torch.ones(len(cams), 3))
    torch.testing.assert_close(white, rgb)
    black = truth_views(scene, cams, torch.zeros(len(cams), 3))
    torch.testing.assert_close(black, rgb - (1 - alpha))  # c·α over black
    assert float(black[alpha[..., 0] < 1e-6].abs().max()) < 1e-6


def test_the_oracle_starts_from_the_runs_init_and_fits_the_truth():
    cfg = build_config("a red cube", preset="cpu", iterations=40, num_points=300, threads=1)
    start = fit_oracle(cfg.__class__(**{**cfg.__dict__, "iterations": 0}), resolution=16)
    again = fit_oracle(cfg.__class__(**{**cfg.__dict__, "iterations": 0}), resolution=16)
    torch.testing.assert_close(start.means, again.means)  # seeded: the same init every time
    losses = []
    fitted = fit_oracle(cfg, resolution=16, callback=lambda step, g, mse: losses.append(mse))
    assert len(losses) == 40 and sum(losses[-5:]) < 0.5 * sum(losses[:5])
    views = C.canonical_views(32, 32)
    truth, truth_alpha = render_scenes([grammar.parse("a red cube")], views)
    before = M.psnr(_render(start, views)[0], truth)
    after_rgb, after_alpha = _render(fitted, views)
    assert M.psnr(after_rgb, truth) > before + 3.0
    assert M.silhouette_iou(after_alpha, truth_alpha) > M.silhouette_iou(_render(start, views)[1], truth_alpha)
