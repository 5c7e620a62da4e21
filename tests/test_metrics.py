"""The claims-v2 metrics on known answers: a lightness change alone must not move a detail metric; blur, speckle,
blur + speckle and floaters each move the metrics that should move, in the right direction; identical images
score the ideal. (The first metrics' own tests stay in test_evaluate.py, through evaluate's re-exports.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.color import rgb2lab

from dreammapping import metrics as M

R = 48


def coloured_truth() -> tuple[torch.Tensor, torch.Tensor]:
    """A red 'cube' on white, two faces of different shades plus a vertical ramp: image [2,R,R,3], alpha
    [2,R,R,1] (second view mirrored); mid-tones, so that ± speckle of std 0.1 is rarely clamped."""
    y, x = torch.meshgrid(torch.arange(R) + 0.5, torch.arange(R) + 0.5, indexing="ij")
    inside = (x > R * 0.25) & (x < R * 0.75) & (y > R * 0.25) & (y < R * 0.75)
    face = torch.where(x < R / 2, 0.45, 0.7) + 0.1 * (y / R)
    rgb = torch.stack([face, 0.35 * face, 0.3 * face], -1)
    img = torch.where(inside[..., None], rgb, torch.ones(3))
    alpha = inside.float()[..., None]
    return torch.stack([img, img.flip(1)]), torch.stack([alpha, alpha.flip(1)])


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    return torch.tensor(ndimage.gaussian_filter(x.double().numpy(), sigma=(0, sigma, sigma, 0), mode="nearest")).float()


def speckle(x: torch.Tensor, alpha: torch.Tensor, std: float = 0.1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (x + std * torch.randn(x.shape[:3], generator=g)[..., None] * alpha).clamp(0, 1)


def with_floaters(img: torch.Tensor, alpha: torch.Tensor, n: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` opaque dark 2×2 blobs per view in the background's corners, far outside the silhouette."""
    img, alpha = img.clone(), alpha.clone()
    for k, (yy, xx) in enumerate([(2, 2), (2, R - 5), (R - 5, 2), (R - 5, R - 5)][:n]):
        img[:, yy:yy + 2, xx:xx + 2] = torch.tensor([0.2, 0.4, 0.2])
        alpha[:, yy:yy + 2, xx:xx + 2] = 1.0
    return img, alpha


def lighter(x: torch.Tensor) -> torch.Tensor:
    """The review's lightness change: 1 − 0.8(1 − x), no blur at all."""
    return 1 - 0.8 * (1 - x)


def detail(img, truth):
    return {"log_energy": M.log_edge_energy_ratio(img, truth), "edge_f": M.relative_edge_f_score(img, truth),
            "ssim": M.matched_ssim(img, truth)}


def test_identical_images_score_the_ideal():
    truth, alpha = coloured_truth()
    fg = alpha[..., 0] > 0.5
    assert M.log_edge_energy_ratio(truth, truth) == pytest.approx(0.0, abs=1e-12)
    assert M.relative_edge_f_score(truth, truth) == 1.0
    assert M.matched_ssim(truth, truth) == pytest.approx(1.0, abs=1e-12)
    assert M.lightness_error(truth, truth, fg) == 0.0
    assert M.chroma_ratio(truth, truth, fg) == pytest.approx(1.0, abs=1e-12)
    assert M.halo_fraction(alpha, alpha) == 0.0
    assert M.floater_count(alpha, alpha) == 0.0
    assert M.residual_noise(truth, truth, alpha) == 0.0


@pytest.mark.parametrize("a,b", [(0.8, 0.2), (1.3, -0.1), (0.5, 0.0)])
def test_affine_matching_undoes_any_affine_luma_map_exactly(a, b):
    truth, _ = coloured_truth()
    matched, lt = M.affine_matched_luma(a * truth + b, truth)
    np.testing.assert_allclose(matched, lt, atol=1e-12)


def test_a_lightness_change_alone_moves_no_detail_metric_but_moves_colour():
    truth, alpha = coloured_truth()
    light = lighter(truth)
    fg = alpha[..., 0] > 0.5
    d = detail(light, truth)
    assert d["log_energy"] == pytest.approx(0.0, abs=1e-9)
    assert d["edge_f"] == 1.0
    assert d["ssim"] == pytest.approx(1.0, abs=1e-9)
    assert M.ssim(light, truth) < 0.99  # plain SSIM is moved by it
    # the old absolute measure is moved by it (0.8² = 0.64 of the energy): the reason for the new ones
    assert M.edge_energy_ratio(light, truth) == pytest.approx(0.64, rel=1e-6)
    # colour metrics are what should see it: lighter and less chromatic
    assert M.lightness_error(light, truth, fg) > 5.0
    assert M.chroma_ratio(light, truth, fg) < 0.9
    assert M.halo_fraction(alpha, alpha) == 0.0 and M.floater_count(alpha, alpha) == 0.0


def test_blur_lowers_detail_more_the_more_it_blurs_and_adds_no_floaters():
    truth, alpha = coloured_truth()
    soft, softer = blur(truth, 0.7), blur(truth, 1.5)
    assert M.log_edge_energy_ratio(softer, truth) < M.log_edge_energy_ratio(soft, truth) < -0.1
    assert M.relative_edge_f_score(softer, truth) < M.relative_edge_f_score(soft, truth) <= 1.0
    assert M.relative_edge_f_score(softer, truth) < 0.95
    assert M.matched_ssim(softer, truth) < M.matched_ssim(soft, truth) < 0.99
    a_soft = blur(alpha, 1.0)
    assert M.floater_count(a_soft, alpha) == 0.0
    assert M.halo_fraction(a_soft, alpha) < 0.01


def test_speckle_raises_energy_and_noise_and_costs_edge_f_score():
    truth, alpha = coloured_truth()
    noisy, noisier = speckle(truth, alpha), speckle(truth, alpha, std=0.2)
    # the object's silhouette step holds most of the energy, so speckle adds a little, more the stronger it is
    assert 0 < M.log_edge_energy_ratio(noisy, truth) < M.log_edge_energy_ratio(noisier, truth)
    assert M.relative_edge_f_score(noisy, truth) < 0.9
    assert M.residual_noise(noisy, truth, alpha) > 0.03
    assert M.matched_ssim(noisier, truth) < M.matched_ssim(noisy, truth) < 0.95
    assert M.floater_count(alpha, alpha) == 0.0  # speckle on the object is not a floater


def test_blur_plus_speckle_is_caught_by_f_score_and_noise_though_it_restores_energy():
    """The review's case: speckle on a blurred truth raises the old edge energy towards 1 (reads as detail);
    the F-score and the noise measure must get worse, not better."""
    truth, alpha = coloured_truth()
    soft = blur(truth, 1.5)
    both = speckle(soft, alpha)
    assert M.log_edge_energy_ratio(both, truth) > M.log_edge_energy_ratio(soft, truth)  # energy "restored"
    assert M.relative_edge_f_score(both, truth) < M.relative_edge_f_score(soft, truth)
    assert M.matched_ssim(both, truth) < min(M.matched_ssim(soft, truth), M.matched_ssim(speckle(truth, alpha), truth))
    assert M.residual_noise(both, truth, alpha) > 2 * M.residual_noise(soft, truth, alpha)


def test_floaters_are_counted_and_move_halo_and_noise_but_not_the_interior_residual():
    truth, alpha = coloured_truth()
    img, a = with_floaters(truth, alpha, n=3)
    assert M.floater_count(a, alpha) == 3.0
    # 3 blobs of 4 px against the object's 24² = 576 px per view
    assert M.halo_fraction(a, alpha) == pytest.approx(12 / (576 + 12))
    assert M.high_frequency_noise(img, truth, alpha) == 0.0  # the interior-only measure cannot see them
    assert M.residual_noise(img, truth, alpha) > 0.01
    assert M.relative_edge_f_score(img, truth) < 1.0


def test_halo_counts_haze_spread_around_the_object():
    truth, alpha = coloured_truth()
    haze = (alpha + 0.05).clamp(max=1)  # a faint veil everywhere: one connected blob, a large share
    outside = float((~(ndimage.binary_dilation(alpha[..., 0].numpy() > 0.5, np.ones((1, 5, 5))))).sum())
    expected = 0.05 * outside / float(haze.sum())
    assert M.halo_fraction(haze, alpha) == pytest.approx(expected, rel=1e-6)
    assert M.floater_count(haze, alpha) == 0.0  # below the floater opacity


def test_lightness_and_chroma_on_flat_known_colours():
    white, black = torch.ones(1, 4, 4, 3), torch.zeros(1, 4, 4, 3)
    assert M.lightness_error(white, black) == pytest.approx(100.0, abs=1e-3)
    red, grey = torch.tensor([0.8, 0.1, 0.1]).expand(1, 4, 4, 3), torch.full((1, 4, 4, 3), 0.5)
    assert M.chroma_ratio(grey, red) == pytest.approx(0.0, abs=1e-3)  # grey has no chroma
    lab = rgb2lab(np.array([[[0.8, 0.1, 0.1]], [[0.4, 0.05, 0.05]]]))
    expected = np.hypot(*lab[1, 0, 1:]) / np.hypot(*lab[0, 0, 1:])
    dark = torch.tensor([0.4, 0.05, 0.05]).expand(1, 4, 4, 3)
    assert M.chroma_ratio(dark, red) == pytest.approx(expected, rel=1e-9)
    assert np.isnan(M.chroma_ratio(red, red, torch.zeros(1, 4, 4, dtype=torch.bool)))
