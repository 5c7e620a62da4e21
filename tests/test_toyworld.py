import colorsys
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from dreammapping.cameras import make_cameras, project
from dreammapping.toyworld.dataset import (
    EVAL_PROMPTS, EVAL_PROMPTS_V2, all_pairs, sample_batch, sample_scenes, training_pairs,
)
from dreammapping.toyworld.grammar import (
    ASPECT_RANGE, COLORS, HELD_OUT, HELD_OUT_PATTERNS, HUE_JITTER, KEY_STRENGTH_RANGE, MAX_SCENE_RADIUS, PAIR_SIZE,
    PATTERN_NAMES, PATTERN_PERIOD, PATTERNS, SHAPE_EXTENTS, SHAPE_PARAMS, SHAPES, SINGLE_SIZE, SIZE_RANGES, STRIPE_DUTY,
    V1_COLOR_NAMES, V1_KNOWN_WORDS, YAW_RANGE, Object, ParseError, Scene, UnknownWordsError, bounding_radius, color_range, make_scene,
    parse, sample_scene, split_view, unknown_words,
)
from dreammapping.toyworld.sdf import color_at, occupancy, pattern_mask, render_scenes, signed_distance
from dreammapping.toyworld.splats import scene_gaussians, surface_gaussians


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


# ------------------------------------------------------------------------------------------------------ world v2

REFERENCE = Path(__file__).parent / "data" / "toyworld_v1_reference.safetensors"


def test_v1_scenes_renders_and_stream_unchanged():
    # Recorded with the code before world v2 (tests/data/make_toyworld_v1_reference.py): claims were scored on these.
    with safe_open(str(REFERENCE), "pt") as f:
        meta, ref = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    prompts, layouts, cam = (json.loads(meta[k]) for k in ("prompts", "layouts", "cameras"))
    n = len(cam["azimuth"])
    cams = make_cameras(torch.tensor(cam["azimuth"]), torch.tensor(cam["elevation"]), torch.full((n,), cam["distance"]),
                        torch.full((n,), cam["fovy"]), cam["size"], cam["size"])
    for i, prompt in enumerate(prompts):
        scene = parse(prompt)
        assert [[o.shape, o.color, list(o.rgb), o.size, list(o.center), o.size_name] for o in scene.objects] == \
            layouts[prompt]
        assert sample_scene(prompt, torch.Generator().manual_seed(i), jitter=0) == scene
        rgb, alpha = render_scenes(scene, cams)
        torch.testing.assert_close(rgb, ref[f"rgb{i}"], rtol=0, atol=1e-6)  # exact here; 1e-6 for other CPUs' SIMD
        torch.testing.assert_close(alpha, ref[f"alpha{i}"], rtol=0, atol=1e-6)
    images, captions, labels = sample_batch(6, resolution=12, generator=torch.Generator().manual_seed(0))
    assert captions == json.loads(meta["batch_captions"])
    assert set(labels) == {k[len("batch_"):] for k in ref if k.startswith("batch_") and k != "batch_images"}
    assert all(torch.equal(v, ref[f"batch_{k}"]) for k, v in labels.items())
    torch.testing.assert_close(images, ref["batch_images"], rtol=0, atol=1e-6)


def test_sample_scene_jitter_stays_in_declared_ranges_and_spreads():
    g = torch.Generator().manual_seed(0)
    draws = [sample_scene("a large red cube with white stripes next to a gray sphere", g) for _ in range(400)]
    a = [s.objects[0] for s in draws]
    # before fitting, the size factor is uniform in SIZE_RANGES["large"]; fitting only ever shrinks the scene
    lo, hi = SIZE_RANGES["large"]
    factors = torch.tensor([o.size / PAIR_SIZE for o in a])
    assert factors.max() <= hi + 1e-9 and factors.std() > 0.02
    yaw = torch.tensor([o.yaw for o in a])
    assert yaw.min() >= YAW_RANGE[0] and yaw.max() <= YAW_RANGE[1]
    assert torch.histc(yaw, bins=4, min=-math.pi, max=math.pi).min() > 60  # spread over the whole turn
    aspect = torch.tensor([o.aspect for o in a])
    assert ASPECT_RANGE[0] <= aspect.min() and aspect.max() <= ASPECT_RANGE[1]
    assert torch.histc(aspect, bins=3, min=ASPECT_RANGE[0], max=ASPECT_RANGE[1]).min() > 80
    for name, rgbs in (("red", [o.rgb for o in a]), ("white", [o.pattern_rgb for o in a]),
                       ("gray", [s.objects[1].rgb for s in draws])):
        (h_lo, h_hi), (l_lo, l_hi) = color_range(name)
        hls = torch.tensor([colorsys.rgb_to_hls(*c) for c in rgbs], dtype=torch.float64)
        hue = (hls[:, 0] - (h_lo + h_hi) / 2 + 0.5) % 1.0 - 0.5  # signed offset from the centre hue
        if name != "white" and name != "gray":
            assert hue.abs().max() <= HUE_JITTER + 1e-6 and hue.std() > HUE_JITTER / 3
        assert l_lo - 1e-6 <= hls[:, 1].min() and hls[:, 1].max() <= l_hi + 1e-6 and hls[:, 1].std() > 0.02
    gaps = torch.tensor([s.objects[1].center[1] - s.objects[0].center[1] for s in draws])
    assert gaps.std() > 0.01  # placement of the pair varies
    keys = torch.tensor([s.light.key_strength for s in draws])
    assert KEY_STRENGTH_RANGE[0] <= keys.min() and keys.max() <= KEY_STRENGTH_RANGE[1] and keys.std() > 0.03
    for s in draws:  # every draw still fits the cameras' framing and keeps its words
        assert max(math.dist(o.center, (0, 0, 0)) + bounding_radius(o) for o in s.objects) <= MAX_SCENE_RADIUS + 1e-6
        assert s.caption() == "a large red cube with white stripes next to a gray sphere"
    # a lone object of each size word: its factor stays inside that word's range (small ones are never fitted)
    small = torch.tensor([sample_scene("a small blue cone", g).objects[0].size / SINGLE_SIZE for _ in range(200)])
    assert SIZE_RANGES["small"][0] - 1e-9 <= small.min() and small.max() <= SIZE_RANGES["small"][1] + 1e-9
    assert small.std() > 0.03


def test_sample_scene_is_seeded_and_rejects_bad_captions():
    one = sample_scene("a red cube", torch.Generator().manual_seed(5))
    assert one == sample_scene("a red cube", torch.Generator().manual_seed(5))
    assert one != sample_scene("a red cube", torch.Generator().manual_seed(6))
    with pytest.raises(UnknownWordsError):
        sample_scene("a red dragon", torch.Generator())


def test_same_seed_same_v2_batch():
    a = sample_batch(6, resolution=16, generator=torch.Generator().manual_seed(3), world=2)
    b = sample_batch(6, resolution=16, generator=torch.Generator().manual_seed(3), world=2)
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
    assert a[1] == b[1] and all(torch.equal(a[2][k], b[2][k]) for k in a[2])
    with pytest.raises(ValueError, match="world"):
        sample_batch(2, resolution=8, world=3)


def test_v2_held_out_combinations_never_sampled():
    scenes, labels = sample_scenes(1500, torch.Generator().manual_seed(2), world=2, pattern_fraction=0.7)
    objs = [o for s in scenes for o in s.objects]
    assert not {(o.color, o.shape) for o in objs} & set(HELD_OUT)
    assert not {(o.pattern, o.shape) for o in objs} & set(HELD_OUT_PATTERNS)
    assert {(o.pattern, o.shape) for o in objs if o.pattern} == \
        {(p, s) for p in PATTERNS for s in SHAPES} - set(HELD_OUT_PATTERNS)  # everything else is drawn
    assert {o.color for o in objs} == set(COLORS) and all(o.pattern_color != o.color for o in objs if o.pattern)
    scenes, _ = sample_scenes(1500, torch.Generator().manual_seed(2), include_held_out=True, world=2,
                              pattern_fraction=0.7)
    objs = [o for s in scenes for o in s.objects]
    assert {(o.pattern, o.shape) for o in objs} & set(HELD_OUT_PATTERNS)
    assert {(o.color, o.shape) for o in objs} & set(HELD_OUT)
    assert {p for p, _ in HELD_OUT_PATTERNS} == set(PATTERNS)  # each pattern held out on one shape


@pytest.mark.parametrize("caption", [
    "a red cube with white stripes", "a small blue sphere with black checks", "a large gray torus with pink dots",
    "a red cube with white dots on top of a blue sphere", "a green cone next to a yellow cylinder with black stripes",
    "a white cube with red checks on top of a black sphere with white dots",
])
def test_pattern_captions_round_trip(caption):
    scene = parse(caption + ", side view")
    assert scene.caption() == caption
    assert parse(scene.caption()) == scene


def test_pattern_parsing():
    (obj,) = parse("a red cube with white stripes").objects
    assert (obj.pattern, obj.pattern_color, obj.pattern_rgb) == ("stripes", "white", COLORS["white"])
    top, bottom = parse("a red cube with white dots on top of a blue sphere").objects
    assert (top.pattern, bottom.pattern) == ("dots", "")
    assert parse("a red ball with white spots").caption() == "a red sphere with white dots"
    assert "white" in COLORS and "black" in COLORS and V1_COLOR_NAMES == tuple(COLORS)[:10]


@pytest.mark.parametrize("prompt", [
    "a red cube with red stripes", "a red cube with white stripes with black dots",
    "a red cube with white stripes and black dots", "a red cube with stripes", "a red cube with white",
    "a red cube with white blue stripes", "a red stripes cube with white dots", "a red stripes",
    "with white stripes", "a red cube and a blue sphere",
])
def test_contradictory_or_malformed_patterns_are_parse_errors(prompt):
    with pytest.raises(ParseError) as info:
        parse(prompt)
    assert "\n" not in str(info.value)


def test_rotated_stretched_cube_occupancy_at_analytic_points():
    half = SHAPE_PARAMS["cube"]["half_side"]
    cube = Object("cube", "red", COLORS["red"], 1.0, (0.1, -0.2, 0.0), yaw=math.pi / 4, aspect=1.2)
    scene = Scene([cube])
    c = torch.tensor(cube.center)
    diag = torch.tensor([math.cos(math.pi / 4), math.sin(math.pi / 4), 0.0])  # the cube's local +x in the world
    far = half * math.sqrt(2)  # a corner of the turned cube lies along world ±x, ±y
    pts = torch.stack([
        c + 0.98 * half * diag, c + 1.02 * half * diag,  # along its local x axis: inside / outside the face
        c + torch.tensor([0.98 * far, 0.0, 0.0]), c + torch.tensor([1.02 * far, 0.0, 0.0]),  # towards a corner
        c + torch.tensor([0.0, 0.0, 0.98 * half * 1.2]), c + torch.tensor([0.0, 0.0, 1.02 * half * 1.2]),  # stretched
    ])
    assert occupancy(scene, pts).tolist() == [True, False, True, False, True, False]
    d = signed_distance(scene, pts)
    torch.testing.assert_close(d[0:2], torch.tensor([-0.02, 0.02]) * half, atol=1e-5, rtol=0)  # exact across x
    # unturned, unstretched: the same corner point is inside (the old axis-aligned cube reaches x = half only)
    assert not occupancy(Scene([Object("cube", "red", COLORS["red"], 1.0, cube.center)]), pts[2:3]).item()


def test_stripes_colour_at_object_local_points():
    yaw = 0.7
    cube = Object("cube", "red", COLORS["red"], 1.0, (0.0, 0.0, 0.0), yaw=yaw, pattern="stripes",
                  pattern_color="white", pattern_rgb=COLORS["white"])
    period = PATTERN_PERIOD * math.sqrt(2.0)  # stripes are bands across local x + z
    local = []
    for s in (0.1, 0.3, 0.6, 0.9, 1.2, 1.6):  # local x + z = s·period-ish, on the +y face (local y = half side)
        w = s * period
        local.append((w / 2, SHAPE_PARAMS["cube"]["half_side"] - 1e-3, w / 2))
    local = torch.tensor(local)
    turn = torch.tensor([[math.cos(yaw), -math.sin(yaw), 0.0], [math.sin(yaw), math.cos(yaw), 0.0], [0, 0, 1.0]])
    world = local @ turn.T
    expect_stripe = [((x + z) / period) % 1.0 < STRIPE_DUTY for x, _, z in local.tolist()]
    got = color_at(Scene([cube]), world)
    for rgb, stripe in zip(got, expect_stripe):
        torch.testing.assert_close(rgb, torch.tensor(COLORS["white" if stripe else "red"]))
    assert any(expect_stripe) and not all(expect_stripe)
    # over a whole face, an unturned cube shows other colours at the same world points: the pattern turns with it
    u = torch.linspace(-0.6, 0.6, 25)
    face = torch.stack([*torch.meshgrid(u, u, indexing="ij")], -1).reshape(-1, 2)
    face_world = torch.stack([face[:, 0], torch.full_like(face[:, 0], 0.699), face[:, 1]], -1) @ turn.T
    plain = Object("cube", "red", COLORS["red"], 1.0, (0.0, 0.0, 0.0), pattern="stripes", pattern_color="white",
                   pattern_rgb=COLORS["white"])
    differ = (color_at(Scene([plain]), face_world) - color_at(Scene([cube]), face_world)).abs().sum(-1) > 0
    assert differ.float().mean() > 0.2


def test_pattern_masks_known_answers():
    p = PATTERN_PERIOD
    q = torch.tensor([[0.0, 0.0, 0.0], [p, 0.0, 0.0], [p / 2 - 0.01, 0.0, 0.0], [0.7, 0.0, 0.0], [0.7, 0.2, 0.0]])
    checks = pattern_mask(q, torch.full((5,), 2)).tolist()
    assert checks[0] != checks[1] and checks[0] == checks[2]  # neighbouring cells differ, a cell is one colour
    dots = pattern_mask(q, torch.full((5,), 3)).tolist()
    assert dots == [True, True, False, True, False]  # lattice points (a cube face holds a row of them) and between
    assert not pattern_mask(q, torch.zeros(5, dtype=torch.long)).any()


def test_v2_renders_show_patterns_and_turn_with_yaw():
    cams = make_cameras(torch.tensor([20.0]), torch.tensor([25.0]), torch.tensor([3.75]), torch.tensor([45.0]), 48, 48)
    plain = parse("a red cube")
    striped = parse("a red cube with white stripes")
    rgb_plain, a_plain = render_scenes(plain, cams)
    rgb_striped, a_striped = render_scenes(striped, cams)
    torch.testing.assert_close(a_plain, a_striped)  # same silhouette
    inside = a_plain[0, ..., 0] == 1
    whiteish = (rgb_striped[0][inside].min(-1).values > 0.5).float().mean()
    assert 0.2 < whiteish < 0.7 and (rgb_plain[0][inside].min(-1).values > 0.5).float().mean() == 0
    striped.objects[0].yaw = 0.5
    rgb_turned, a_turned = render_scenes(striped, cams)
    assert (a_turned - a_striped).abs().sum() > 10  # the silhouette turns
    lit = sample_scene("a red cube with white stripes", torch.Generator().manual_seed(0))
    rgb_lit, _ = render_scenes(lit, cams)
    assert lit.light is not None and not torch.equal(rgb_lit, rgb_striped)


def test_surface_and_solid_gaussians_follow_turned_patterned_scenes():
    scene = sample_scene("a blue cube with yellow checks on top of a red sphere", torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(0)
    shell = surface_gaussians(scene, n=3000, generator=g, batch=50_000)
    assert signed_distance(scene, shell.means).abs().max() < 0.01
    solid = scene_gaussians(scene, n=3000, generator=g, batch=50_000)
    assert occupancy(scene, solid.means).all()
    colors = color_at(scene, shell.means)
    yellow = torch.tensor(scene.objects[0].pattern_rgb)
    assert (colors - yellow).abs().sum(-1).lt(1e-6).float().mean() > 0.1  # the checks are in the truth's colours


def test_eval_prompts_v2_parse():
    scenes = [parse(p) for p in EVAL_PROMPTS_V2]
    assert {(o.pattern, o.shape) for s in scenes for o in s.objects} >= set(HELD_OUT_PATTERNS)


def test_v1_vocabulary_reports_v2_words():
    assert unknown_words("a red cube with white stripes", V1_KNOWN_WORDS) == ["with", "white", "stripes"]
    assert unknown_words("a red cube with white stripes") == []
    assert unknown_words("a small grey ball on top of a red cube, front view", V1_KNOWN_WORDS) == []
