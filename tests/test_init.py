"""Initial Gaussians: sphere, ball, a user's .ply, and Shap-E — its loading path (a tiny random Shap-E pipeline built
from configs and saved as a diffusers folder) and its fallback when the weights are not available."""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny_shap_e

from dreammapping import gaussians as G
from dreammapping.export import save_ply
from dreammapping.init import InitError, InitOptions, initialise, normalise


def test_sphere_and_ball():
    gen = torch.Generator().manual_seed(0)
    r = initialise("sphere", 300, InitOptions(radius=0.5, color=(1.0, 0.0, 0.0)), generator=gen)
    assert r.used == "sphere" and len(r.gaussians) == 300 and "sphere" in r.reason
    torch.testing.assert_close(r.gaussians.means.norm(dim=-1), torch.full((300,), 0.5))
    torch.testing.assert_close(r.gaussians.colors, torch.tensor([1.0, 0.0, 0.0]).expand(300, 3))
    b = initialise("ball", 300, InitOptions(radius=0.7), sh_degree=1, generator=gen)
    assert b.used == "ball" and b.gaussians.sh.shape == (300, 4, 3)
    assert b.gaussians.means.norm(dim=-1).max() <= 0.7 + 1e-6
    assert not any(t.requires_grad for t in b.gaussians.params().values())


def test_user_ply_and_its_errors(tmp_path):
    g = G.random_ball(50, generator=torch.Generator().manual_seed(1), sh_degree=1)
    path = save_ply(tmp_path / "mine.ply", g)
    r = initialise(str(path), 999, sh_degree=1)
    assert r.used == "ply" and str(path) in r.reason
    for name, tensor in g.params().items():
        torch.testing.assert_close(r.gaussians.params()[name], tensor)
    r0 = initialise(str(path), 999, sh_degree=0)  # SH bands truncated (or zero-padded) to the run's degree
    assert r0.gaussians.sh.shape == (50, 1, 3)
    torch.testing.assert_close(r0.gaussians.sh[:, 0], g.sh[:, 0])
    r3 = initialise(str(path), 999, sh_degree=3)
    assert r3.gaussians.sh.shape == (50, 16, 3) and (r3.gaussians.sh[:, 4:] == 0).all()
    with pytest.raises(InitError, match="not found"):
        initialise(str(tmp_path / "nope.ply"), 10)
    (tmp_path / "broken.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\n")
    with pytest.raises(InitError, match="broken.ply"):
        initialise(str(tmp_path / "broken.ply"), 10)
    with pytest.raises(InitError, match="unknown init"):
        initialise("cloud-of-magic", 10)


def test_shap_e_falls_back_when_weights_are_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = initialise("shap-e", 120, InitOptions(shap_e_model="openai/shap-e"), prompt="a chair")
    assert r.used == "sphere" and len(r.gaussians) == 120
    assert r.reason.startswith("Shap-E unavailable") and "openai/shap-e" in r.reason and "sphere" in r.reason
    assert "\n" not in r.reason
    r = initialise("shap-e", 80, InitOptions(shap_e_model=str(tmp_path / "no-shap-e"), fallback="ball"))
    assert r.used == "ball" and len(r.gaussians) == 80 and "no-shap-e" in r.reason
    empty = tmp_path / "empty"
    empty.mkdir()
    r = initialise("shap-e", 80, InitOptions(shap_e_model=str(empty)))
    assert r.used == "sphere" and "Shap-E unavailable" in r.reason


def test_shap_e_path_with_a_tiny_random_pipeline(tmp_path):
    folder = build_tiny_shap_e(tmp_path / "shap-e", sdf_bias=3.0)
    options = InitOptions(shap_e_model=str(folder), shap_e_steps=2, shap_e_grid=12, shap_e_surface_points=150,
                          radius=0.8)
    gen = torch.Generator().manual_seed(0)
    r = initialise("shap-e", 400, options, prompt="a red cube", generator=gen)
    assert r.used == "shap-e" and len(r.gaussians) == 400, r.reason
    g = r.gaussians
    assert torch.isfinite(g.means).all() and g.means.norm(dim=-1).max() <= 0.8 * 1.5
    assert (g.colors >= -1e-6).all() and (g.colors <= 1 + 1e-6).all()
    again = initialise("shap-e", 400, options, prompt="a red cube", generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(again.gaussians.means, g.means)  # seeded: reproducible


def test_normalise_fits_the_radius():
    p = torch.tensor([[0.0, 0.0, 0.0], [2.0, 2.0, 2.0], [2.0, 0.0, 0.0]])
    q = normalise(p, 0.5)
    assert q.norm(dim=-1).max() == pytest.approx(0.5)
    torch.testing.assert_close((q.amax(0) + q.amin(0)) / 2, torch.zeros(3))


def test_user_ply_with_nan_or_no_points_is_refused(tmp_path):
    g = G.sphere(40)
    g.means[3] = float("nan")
    save_ply(tmp_path / "nan.ply", g)
    with pytest.raises(InitError, match="1 of 40 Gaussians have NaN"):
        initialise(str(tmp_path / "nan.ply"), 10)
    save_ply(tmp_path / "empty.ply", G.sphere(40).map(lambda t: t[:0]))
    with pytest.raises(InitError, match="no Gaussians"):
        initialise(str(tmp_path / "empty.ply"), 10)
