"""The degraded renderer: strength 0 is the identity, the weight decays to zero at the fixed step, the blur and
desaturation are the known ones, and in training only the prior's input is degraded (the scene is not)."""

from __future__ import annotations

import math

import pytest
import torch

from dreammapping import train as T
from dreammapping.degrade import DegradeConfig, check_degrade, degrade_images, degrade_weight, gaussian_blur
from dreammapping.errors import ConfigError


def images(seed: int = 0) -> torch.Tensor:
    return torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(seed))


def test_strength_zero_is_the_identity_at_every_step():
    x = images()
    for step in (0, 1, 75, 149, 150, 10_000):
        assert degrade_images(x, DegradeConfig(), step) is x


def test_the_weight_decays_linearly_to_zero_at_the_fixed_step_and_stays_there():
    cfg = DegradeConfig(strength=0.5, until_step=100)
    assert degrade_weight(cfg, 0) == 0.5
    assert degrade_weight(cfg, 50) == pytest.approx(0.25)
    assert degrade_weight(cfg, 99) == pytest.approx(0.005)
    assert degrade_weight(cfg, 100) == 0.0 and degrade_weight(cfg, 500) == 0.0
    x = images()
    assert degrade_images(x, cfg, 100) is x
    assert not torch.equal(degrade_images(x, cfg, 99), x)


def test_the_blur_has_the_requested_sigma_and_keeps_the_mean():
    impulse = torch.zeros(1, 1, 41, 41, dtype=torch.float64)
    impulse[0, 0, 20, 20] = 1.0
    sigma = 1.5
    out = gaussian_blur(impulse, sigma)[0, 0]
    assert float(out.sum()) == pytest.approx(1.0, abs=1e-12)
    d = torch.arange(41, dtype=torch.float64) - 20
    var_x = float((out.sum(0) * d**2).sum())  # discrete Gaussian truncated at 3σ: its variance ≈ σ²
    assert var_x == pytest.approx(sigma**2, rel=0.03)
    assert gaussian_blur(impulse, 0.0) is impulse


def test_desaturation_moves_colours_towards_their_luma_and_leaves_grey_alone():
    grey = torch.full((1, 3, 8, 8), 0.4)
    full = DegradeConfig(strength=1.0, blur_sigma=0.0, desaturation=1.0, until_step=10)
    torch.testing.assert_close(degrade_images(grey, full, 0), grey)
    red = torch.zeros(1, 3, 8, 8)
    red[:, 0] = 1.0
    torch.testing.assert_close(degrade_images(red, full, 0), torch.full_like(red, 0.299))  # all the way to luma
    half = DegradeConfig(strength=0.5, blur_sigma=0.0, desaturation=1.0, until_step=10)
    expected = 0.299 + 0.5 * (red - 0.299)
    torch.testing.assert_close(degrade_images(red, half, 0), expected)


def test_gradients_flow_through_it():
    x = images().requires_grad_(True)
    degrade_images(x, DegradeConfig(strength=1.0), 0).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("bad", [dict(strength=1.5), dict(strength=math.nan), dict(blur_sigma=-1.0),
                                 dict(desaturation=2.0), dict(until_step=0)])
def test_out_of_range_values_are_one_line_errors(bad):
    with pytest.raises(ValueError):
        check_degrade(DegradeConfig(**bad))
    cfg = T.build_config("a red cube", preset="cpu", degrade=DegradeConfig(**bad))
    with pytest.raises(ConfigError, match="degrade"):
        T.check_config(cfg)


def test_in_training_only_the_priors_input_is_degraded(tiny_pixel_folder, tmp_path, monkeypatch):
    """A 3-step run with the weight reaching 0 at step 2: the guidance method sees degrade(render) at steps 0 and
    1 and the plain render at step 2; the renders themselves (what the scene is) are never changed."""
    seen = []
    real = T.degrade_images

    def spy(images, cfg, step):
        out = real(images, cfg, step)
        seen.append((step, images.detach().clone(), out.detach().clone()))
        return out

    monkeypatch.setattr(T, "degrade_images", spy)
    cfg = T.build_config("a red cube", preset="cpu", prior=str(tiny_pixel_folder), iterations=3, num_points=100,
                         turntable_frames=2, turntable_size=16, threads=1, checkpoint_every=0,
                         degrade=DegradeConfig(strength=1.0, until_step=2))
    T.train(cfg, tmp_path / "run", progress=False, log=lambda msg: None)
    assert [s for s, _, _ in seen] == [0, 1, 2]
    for step, rendered, given in seen:
        assert torch.equal(given, rendered) == (step >= 2), step
    # the run's config records the experiment, so a record says what the prior saw
    assert "degrade" in (tmp_path / "run" / "config.yaml").read_text()
