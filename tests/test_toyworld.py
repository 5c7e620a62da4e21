import math

import pytest
import torch

from dreammapping.cameras import make_cameras, project
from dreammapping.toyworld.dataset import (
    EVAL_PROMPTS, EVAL_PROMPTS_V2, all_pairs, sample_batch, sample_scenes, training_pairs,
)
from dreammapping.toyworld.grammar import (
    COLORS, HELD_OUT, MAX_SCENE_RADIUS, PATTERN_NAMES, SHAPE_EXTENTS, SHAPES, V1_COLOR_NAMES, Object, ParseError,
    Scene, UnknownWordsError, make_scene, parse, split_view, unknown_words,
)
from dreammapping.toyworld.sdf import color_at, occupancy, render_scenes


def _sphere_scene(radius: float, center=(0.0, 0.0, 0.0)) -> Scene:
    unit = 0.85  # SHAPE_PARAMS["sphere"]["radius"]
    return Scene([Object("sphere", "red", COLORS["red"], radius / unit, center)])


def _front_camera(res: int, distance: float = 3.75, fovy: float = 45.0, elevation: float = 0.0):
    one = lambda v: torch.tensor([float(v)])  # noqa: E731
    return make_cameras(one(0.0), one(elevation), one(distance), one(fovy), res, res)


# ------------------------------------------------------------------------------------------------------- dataset


def test_sample_batch_shapes_and_determinism():
    a = sample_batch(12, resolution=16, generator=torch.Generator().manual_seed(3))
    b = sample_batch(12, resolution=16, generator=torch.Generator().manual_seed(3))
    c = sample_batch(12, resolution=16, generator=torch.Generator().manual_seed(4))
    images, captions, labels = a
    assert images.shape == (12, 3, 16, 16) and images.dtype == torch.float32
    assert 0.0 <= images.min() and images.max() <= 1.0
    assert len(captions) == 12 and all(cap.endswith(" view") for cap in captions)
    for key in ("color", "shape", "second_color", "second_shape", "relation", "view", "size"):
        assert labels[key].shape == (12,) and labels[key].dtype == torch.long
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
    assert a[1] == b[1]
    assert all(torch.equal(a[2][k], b[2][k]) for k in a[2])
    assert a[1] != c[1] and not torch.equal(a[0], c[0])


@pytest.mark.parametrize("world", [1, 2])
def test_labels_agree_with_captions(world):
    _, captions, labels = sample_batch(40, resolution=8, generator=torch.Generator().manual_seed(0), supersample=1,
                                       world=world)
    colors, views = list(COLORS), ("front", "side", "back", "overhead")
    for i, cap in enumerate(captions):
        body, tag = split_view(cap)
        assert tag == views[labels["view"][i]]
        scene = parse(body)
        assert scene.caption() == body
        first = scene.objects[0]
        assert (colors[labels["color"][i]], SHAPES[labels["shape"][i]]) == (first.color, first.shape)
        if scene.relation is None:
            assert labels["relation"][i] == -1 and labels["second_shape"][i] == -1
        else:
            second = scene.objects[1]
            assert (colors[labels["second_color"][i]], SHAPES[labels["second_shape"][i]]) == (second.color, second.shape)
            assert labels["relation"][i] == ("on top of", "next to").index(scene.relation)
        if world == 2:
            for k, obj in enumerate(scene.objects):
                pre = "second_" if k else ""
                assert labels[pre + "pattern"][i] == (PATTERN_NAMES.index(obj.pattern) if obj.pattern else 0)
                assert labels[pre + "pattern_color"][i] == (colors.index(obj.pattern_color) if obj.pattern else -1)
            if scene.relation is None:
                assert labels["second_pattern"][i] == -1 and labels["second_pattern_color"][i] == -1
    assert (labels["relation"] >= 0).any() and (labels["relation"] == -1).any()
    if world == 2:
        assert (labels["pattern"] > 0).any() and (labels["pattern"] == 0).any()
    else:
        assert "pattern" not in labels and max(labels["color"].max(), labels["second_color"].max()) < len(V1_COLOR_NAMES)


def test_held_out_pairs_excluded_unless_asked():
    held = set(HELD_OUT)
    scenes, _ = sample_scenes(600, torch.Generator().manual_seed(1))
    seen = {(o.color, o.shape) for s in scenes for o in s.objects}
    assert not seen & held
    assert len(seen) > 30  # and the rest are covered
    scenes, _ = sample_scenes(600, torch.Generator().manual_seed(1), include_held_out=True)
    assert {(o.color, o.shape) for s in scenes for o in s.objects} & held
    assert len(all_pairs()) == len(SHAPES) * len(V1_COLOR_NAMES)
    assert len(all_pairs(2)) == len(SHAPES) * len(COLORS)
    assert len(training_pairs()) == len(all_pairs()) - len(HELD_OUT)
    assert sorted(s for _, s in HELD_OUT) == sorted(SHAPES)  # each shape held out once


def test_eval_prompts_parse_and_include_held_out():
    for prompt in EVAL_PROMPTS:
        parse(prompt)
    assert {f"a {c} {s}" for c, s in HELD_OUT} <= set(EVAL_PROMPTS)


# ------------------------------------------------------------------------------------------------------- grammar


def test_parse_single_objects():
    scene = parse("A Red Cube, front view.")
    assert len(scene.objects) == 1 and scene.relation is None
    (obj,) = scene.objects
    assert (obj.shape, obj.color, obj.rgb, obj.center) == ("cube", "red", COLORS["red"], (0.0, 0.0, 0.0))
    small, large, plain = parse("a small blue sphere"), parse("the large blue sphere"), parse("blue sphere")
    assert small.objects[0].size < plain.objects[0].size < large.objects[0].size
    assert small.caption() == "a small blue sphere"
    assert parse("an orange torus!").caption() == "an orange torus"


def test_parse_on_top_of():
    scene = parse("a red cube on top of a blue sphere, side view")
    assert scene.relation == "on top of" and scene.caption() == "a red cube on top of a blue sphere"
    top, bottom = scene.objects
    assert (top.shape, bottom.shape) == ("cube", "sphere")
    # A rests on B: A's bottom touches B's top, stacked along z, the pair centred vertically
    top_h, bottom_h = SHAPE_EXTENTS["cube"][0] * top.size, SHAPE_EXTENTS["sphere"][0] * bottom.size
    assert top.center[2] - top_h == pytest.approx(bottom.center[2] + bottom_h, abs=1e-6)
    assert top.center[2] + top_h == pytest.approx(-(bottom.center[2] - bottom_h), abs=1e-6)
    assert top.center[:2] == bottom.center[:2] == (0.0, 0.0)


def test_parse_next_to():
    scene = parse("a green cone next to a yellow cylinder")
    assert scene.relation == "next to"
    a, b = scene.objects
    assert a.center[1] < 0 < b.center[1] and a.center[0] == b.center[0] == 0  # A left as seen from the front (−y)
    bottoms = [o.center[2] - SHAPE_EXTENTS[o.shape][0] * o.size for o in scene.objects]
    assert bottoms[0] == pytest.approx(bottoms[1])
    assert parse("a green cone beside a yellow cylinder").caption() == scene.caption()


def test_scenes_fit_inside_max_radius():
    for c1, s1 in all_pairs()[::3]:
        for s2 in SHAPES:
            for rel in ("on top of", "next to"):
                scene = make_scene((c1, s1, "large"), ("red", s2, "large"), rel)
                r = max(math.dist(o.center, (0, 0, 0)) + SHAPE_EXTENTS[o.shape][2] * o.size for o in scene.objects)
                assert r <= MAX_SCENE_RADIUS + 1e-6


def test_unknown_words_error_lists_the_words():
    assert unknown_words("a flying red dragon, front view") == ["flying", "dragon"]
    assert unknown_words("a red cube on top of a blue sphere") == []
    with pytest.raises(UnknownWordsError) as info:
        parse("a flying red dragon")
    message = str(info.value)
    assert "'flying'" in message and "'dragon'" in message and "cube" in message and "red" in message
    assert "\n" not in message and info.value.words == ["flying", "dragon"]
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "prompt", ["a red", "a cube", "red cube blue", "a red cube on top of", "a red cube next to a blue sphere on a cube",
               "a red blue cube", "front red cube", ""],
)
def test_parse_errors_on_bad_structure(prompt):
    with pytest.raises(ParseError):
        parse(prompt)


# ----------------------------------------------------------------------------------------------------- SDF & render


def test_occupancy_and_color_at():
    scene = parse("a red cube on top of a blue sphere")
    top, bottom = scene.objects
    pts = torch.tensor([top.center, bottom.center, (0.0, 0.0, 5.0), (3.0, 3.0, 0.0)])
    assert occupancy(scene, pts).tolist() == [True, True, False, False]
    colors = color_at(scene, pts)
    torch.testing.assert_close(colors[0], torch.tensor(COLORS["red"]))
    torch.testing.assert_close(colors[1], torch.tensor(COLORS["blue"]))
    torch.testing.assert_close(colors[2], torch.tensor(COLORS["red"]))  # nearest to the top object
    for shape in SHAPES:  # each shape contains its centre and not a point beyond its bounding radius
        s = parse(f"a gray {shape}")
        o = s.objects[0]
        inside = torch.tensor([[0.0, 0.0, 0.0]]) if shape != "torus" else torch.tensor([[0.62 * o.size, 0.0, 0.0]])
        outside = torch.tensor([[SHAPE_EXTENTS[shape][2] * o.size * 1.01, 0.0, 0.0]])
        assert occupancy(s, torch.cat([inside, outside])).tolist() == [True, False]
    assert not occupancy(parse("a gray torus"), torch.zeros(1, 3)).item()  # the hole


def test_sphere_silhouette_area():
    res, dist, fovy, r = 64, 3.75, 45.0, 0.8
    cams = _front_camera(res, dist, fovy)
    _, alpha = render_scenes(_sphere_scene(r), cams, supersample=4)
    f = cams.Ks[0, 1, 1].item()
    r_px = f * math.tan(math.asin(r / dist))
    assert alpha.sum().item() == pytest.approx(math.pi * r_px**2, rel=0.03)


def test_render_matches_camera_projection():
    # an off-centre sphere lands where cameras.project puts its centre (world +y is image-right, +z image-up)
    res, center = 48, (0.0, 0.5, 0.3)
    cams = _front_camera(res, elevation=10.0)
    _, alpha = render_scenes(_sphere_scene(0.25, center), cams, supersample=2)
    w = alpha[0, ..., 0]
    ys, xs = torch.meshgrid(torch.arange(res) + 0.5, torch.arange(res) + 0.5, indexing="ij")
    centroid = torch.stack([(w * xs).sum() / w.sum(), (w * ys).sum() / w.sum()])
    uv, _ = project(torch.tensor([center]), cams)
    assert centroid[0] > res / 2 and centroid[1] < res / 2
    torch.testing.assert_close(centroid, uv[0, 0], atol=0.35, rtol=0)


def test_background_is_white_and_batch_broadcasts():
    scene = parse("a red cone next to a blue torus")
    cams = make_cameras(torch.tensor([0.0, 90.0, 180.0]), torch.tensor([15.0, 30.0, 80.0]), torch.full((3,), 3.75),
                        torch.full((3,), 45.0), 24, 20)
    rgb, alpha = render_scenes(scene, cams)
    assert rgb.shape == (3, 20, 24, 3) and alpha.shape == (3, 20, 24, 1)
    empty = alpha[..., 0] == 0
    assert empty.any() and (alpha[..., 0] == 1).any()
    assert torch.all(rgb[empty] == 1.0)
    solid = alpha[..., 0] == 1
    assert rgb[solid].max(dim=-1).values.min() < 0.95  # object pixels are coloured, not white


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    g = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    cpu, caps_cpu, _ = sample_batch(8, generator=g())
    gpu, caps_gpu, labels = sample_batch(8, generator=g(), device="cuda")
    assert gpu.device.type == "cuda" and labels["color"].device.type == "cuda" and caps_cpu == caps_gpu
    assert (gpu.cpu() - cpu).abs().mean() < 1e-3


def test_unknown_words_see_non_ascii_words_whole():
    from dreammapping.toyworld.grammar import content_words

    assert unknown_words("a café cube") == ["café"]  # once reported as 'caf'
    assert unknown_words("🍎🍎") == ["🍎🍎"]  # once no word at all
    assert unknown_words("a red cube — front view") == []  # punctuation alone is not a word
    assert unknown_words("a red-cube, front view!") == []
    assert content_words("🍎🍎") == [] and content_words("a big red ball") == ["big", "red", "ball"]
