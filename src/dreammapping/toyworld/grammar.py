"""The toy world's language: prompts ↔ scenes of one or two coloured primitives.

Grammar (case, articles and punctuation are ignored; a trailing "<tag> view" is dropped)::

    prompt   := object | object relation object
    object   := [size] colour shape [pattern]
    pattern  := "with" colour ("stripes" | "checks" | "dots")      (a colour other than the object's)
    relation := "on top of" | "on" | "next to" | "beside"

Layout (all in world units, +z up, the front camera sits on +x looking towards −x so world +y is image-right):

- one object: centred at the origin;
- "A on top of B": B below, A resting on B's top face, stacked along z; the pair's vertical extent is centred on z = 0;
- "A next to B": side by side along world y with A on the **left as seen from the front** (−y) and B on the right
  (+y), both resting on a common floor; the pair is centred on the origin.

Every scene is scaled down, if needed, so it fits inside a sphere of radius `MAX_SCENE_RADIUS` around the origin,
which the orbit cameras (radius 3.5–4, fovy 40–50°) frame with room to spare.

World v2: `parse` gives the canonical scene (the centre of every jitter range: what evaluation takes as the truth;
for every v1 prompt it is exactly v1's scene), and `sample_scene` draws from p(scene | caption): size within the
size word's range, hue and lightness within each colour word's range, aspect, yaw about +z, placement, the gap
between neighbours, and the light. Patterns live in each object's local frame (they turn and stretch with it).
"""

from __future__ import annotations

import colorsys
import math
import re
import unicodedata
from dataclasses import dataclass, field

import torch

from dreammapping.cameras import VIEW_TAGS

# --------------------------------------------------------------------------------------------------------- words

SHAPES: tuple[str, ...] = ("cube", "sphere", "cone", "cylinder", "torus")

# Saturated colours that stay recognisable under Lambert shading on a white background (no white on purpose).
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.10, 0.10),
    "orange": (1.00, 0.50, 0.05),
    "yellow": (0.96, 0.86, 0.10),
    "green": (0.12, 0.66, 0.16),
    "cyan": (0.10, 0.80, 0.86),
    "blue": (0.10, 0.26, 0.90),
    "purple": (0.52, 0.16, 0.78),
    "pink": (1.00, 0.46, 0.72),
    "brown": (0.50, 0.30, 0.12),
    "gray": (0.50, 0.50, 0.50),
    # world v2 (mostly for patterns; a white object shows by its shading against the white background)
    "white": (0.93, 0.93, 0.93),
    "black": (0.08, 0.08, 0.08),
}
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)  # label ids; v2's colours come last so v1's ids are unchanged
V1_COLOR_NAMES: tuple[str, ...] = COLOR_NAMES[:10]  # what world v1 draws (and the v1 prior and classifier know)

# Size adjective → scale factor relative to the default size (no adjective).
SIZES: dict[str, float] = {"small": 0.7, "large": 1.3}

RELATIONS: tuple[str, ...] = ("on top of", "next to")  # index = the dataset's `relation` label

# Surface patterns (world v2); the dataset's `pattern` label is 1 + the index here, 0 = plain.
PATTERNS: tuple[str, ...] = ("stripes", "checks", "dots")
PATTERN_NAMES: tuple[str, ...] = ("none", *PATTERNS)  # index = the dataset's `pattern` label

# (colour, shape) pairs never shown to the embedded prior during training (each shape once, each colour at most
# once), so evaluation can test compositional generalisation: does "a blue cone" work when only other blue
# things and other cones were seen?
HELD_OUT: tuple[tuple[str, str], ...] = (
    ("blue", "cone"),
    ("red", "cylinder"),
    ("green", "torus"),
    ("yellow", "cube"),
    ("purple", "sphere"),
)
# (pattern, shape) pairs never shown in world-v2 training (each pattern once, each shape at most once).
HELD_OUT_PATTERNS: tuple[tuple[str, str], ...] = (
    ("stripes", "cylinder"),
    ("checks", "sphere"),
    ("dots", "cube"),
)

_ARTICLES = {"a", "an", "the"}
_SIZE_SYNONYMS = {"small": "small", "tiny": "small", "little": "small", "large": "large", "big": "large"}
_COLOR_SYNONYMS = {**{c: c for c in COLORS}, "grey": "gray", "violet": "purple"}
_PATTERN_SYNONYMS = {
    **{p: p for p in PATTERNS}, "stripe": "stripes", "check": "checks", "checkers": "checks", "dot": "dots",
    "spots": "dots",
}
_SHAPE_SYNONYMS = {
    **{s: s for s in SHAPES}, "box": "cube", "block": "cube", "ball": "sphere",
    "donut": "torus", "doughnut": "torus", "ring": "torus",
}
# Relation phrases, longest first; value = index into RELATIONS.
_RELATION_PHRASES: tuple[tuple[tuple[str, ...], int], ...] = (
    (("on", "top", "of"), 0), (("on",), 0), (("atop",), 0), (("next", "to"), 1), (("beside",), 1),
)
_RELATION_WORDS = {w for phrase, _ in _RELATION_PHRASES for w in phrase}
_VIEW_WORDS = {*VIEW_TAGS, "view"}
_PATTERN_GLUE = {"with", "and"}  # "and" is read only to say that one object takes one pattern
_CONTENT_WORDS = set(_SIZE_SYNONYMS) | set(_COLOR_SYNONYMS) | set(_SHAPE_SYNONYMS) | set(_PATTERN_SYNONYMS)
KNOWN_WORDS: frozenset[str] = frozenset(
    _ARTICLES | set(_SIZE_SYNONYMS) | set(_COLOR_SYNONYMS) | set(_SHAPE_SYNONYMS) | _RELATION_WORDS | _VIEW_WORDS
    | set(_PATTERN_SYNONYMS) | _PATTERN_GLUE
)
# The words world v1 knew (what the shipped v1 prior was trained on): no patterns, no white or black.
V1_KNOWN_WORDS: frozenset[str] = KNOWN_WORDS - set(_PATTERN_SYNONYMS) - _PATTERN_GLUE - {
    w for w, c in _COLOR_SYNONYMS.items() if c not in V1_COLOR_NAMES}

# ------------------------------------------------------------------------------------------------------ geometry

# Unit geometry of each shape at size 1 (the SDFs in `sdf.py` use exactly these numbers). Cone and cylinder stand on
# their base with the axis along z; the torus lies flat (axis z).
SHAPE_PARAMS: dict[str, dict[str, float]] = {
    "cube": {"half_side": 0.70},
    "sphere": {"radius": 0.85},
    "cone": {"radius": 0.80, "half_height": 0.85},
    "cylinder": {"radius": 0.70, "half_height": 0.75},
    "torus": {"major": 0.62, "minor": 0.33},
}
# Per shape at size 1: (half height along z, half width in the horizontal plane for any yaw, bounding radius).
SHAPE_EXTENTS: dict[str, tuple[float, float, float]] = {
    "cube": (0.70, 0.70 * math.sqrt(2), 0.70 * math.sqrt(3)),
    "sphere": (0.85, 0.85, 0.85),
    "cone": (0.85, 0.80, math.hypot(0.80, 0.85)),
    "cylinder": (0.75, 0.70, math.hypot(0.70, 0.75)),
    "torus": (0.33, 0.95, 0.95),
}
SINGLE_SIZE = 0.75  # default scale of a lone object
PAIR_SIZE = 0.6  # default scale of each object in a two-object scene
NEXT_TO_GAP = 0.12  # empty space between two objects side by side
MAX_SCENE_RADIUS = 1.05

# Pattern geometry in the unit shape's local frame (a cube face spans [-0.7, 0.7]): stripes run diagonally (along
# local x − z, so every face of a cube shows them), checks are a 3D checkerboard offset by half a cell so no cell
# border lies on a cube face, dots are balls on a cubic lattice (centred on the cube's faces).
PATTERN_PERIOD = 0.35
STRIPE_DUTY = 0.45  # fraction of each period in the pattern colour
DOT_RADIUS = 0.12

# ------------------------------------------------------------------------------------ world v2: jitter ranges
# p(scene | caption) draws each number uniformly in its range; the canonical scene sits at every range's centre.
SIZE_RANGES: dict[str, tuple[float, float]] = {"": (0.9, 1.1), "small": (0.62, 0.78), "large": (1.2, 1.4)}
HUE_JITTER = 0.025  # ± fraction of a turn around the colour word's hue (≈ ±9°); greys have no hue to turn
LIGHTNESS_JITTER = 0.05  # ± HLS lightness around the colour word's
ASPECT_RANGE = (0.85, 1.15)  # vertical stretch of the unit shape (height × aspect)
YAW_RANGE = (-math.pi, math.pi)  # rotation about +z through the object's centre
PLACEMENT_JITTER = (0.08, 0.08, 0.05)  # ± shift of the whole scene along x, y, z (before fitting)
NEXT_TO_GAP_RANGE = (0.06, 0.18)  # centre = NEXT_TO_GAP
KEY_AZIMUTH_JITTER = math.radians(30)  # ± turn of the key light about +z
KEY_ELEVATION_JITTER = math.radians(10)  # ± tilt of the key light
KEY_STRENGTH_RANGE = (0.5, 0.7)
FILL_STRENGTH_RANGE = (0.2, 0.4)
_DRAWS_PER_OBJECT = 7  # size, aspect, yaw, hue, lightness, pattern hue, pattern lightness
N_DRAWS = 2 * _DRAWS_PER_OBJECT + 3 + 1 + 4  # + placement xyz, gap, light (azimuth, elevation, key, fill)


# ---------------------------------------------------------------------------------------------------- dataclasses


@dataclass(frozen=True)
class Light:
    """Lambertian lighting: shade = ambient + key·max(n·key_dir, 0) + fill·max(n·fill_dir, 0) (dirs point to the
    lights, normalised by the renderer). The default is v1's fixed light, from the upper front-left (front = +x)."""

    key_dir: tuple[float, float, float] = (1.0, -0.8, 1.4)
    key_strength: float = 0.6
    fill_dir: tuple[float, float, float] = (-1.0, 0.8, -0.2)
    fill_strength: float = 0.3
    ambient: float = 0.4


CANONICAL_LIGHT = Light()


class ParseError(ValueError):
    """Known words in a structure the grammar does not accept."""


class UnknownWordsError(ValueError):
    """The prompt uses words outside the toy world's vocabulary."""

    def __init__(self, words: list[str]):
        self.words = list(words)
        listed = ", ".join(repr(w) for w in self.words)
        super().__init__(
            f"unknown words: {listed} (known shapes: {', '.join(SHAPES)}; colours: {', '.join(COLORS)}; "
            f"sizes: {', '.join(SIZES)}; relations: {', '.join(RELATIONS)}; patterns: with <colour> "
            f"{' / '.join(PATTERNS)})"
        )


@dataclass
class Object:
    shape: str  # one of SHAPES
    color: str  # one of COLORS
    rgb: tuple[float, float, float]
    size: float  # scale of the unit shape in SHAPE_PARAMS
    center: tuple[float, float, float]  # world position of the shape's centre (middle of its z extent)
    size_name: str = ""  # "", "small" or "large": the adjective used in the caption
    yaw: float = 0.0  # radians about +z through `center` (counter-clockwise seen from above)
    aspect: float = 1.0  # vertical stretch of the unit shape: its height × aspect, its width unchanged
    pattern: str = ""  # "" (plain) or one of PATTERNS, in the object's local frame
    pattern_color: str = ""  # colour word of the pattern ("" when plain)
    pattern_rgb: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def phrase(self) -> str:
        words = [w for w in (self.size_name, self.color, self.shape) if w]
        if self.pattern:
            words += ["with", self.pattern_color, self.pattern]
        return " ".join(words)


@dataclass
class Scene:
    objects: list[Object]
    relation: str | None = None  # None for one object, else one of RELATIONS (objects[0] RELATION objects[1])
    extras: dict = field(default_factory=dict, repr=False)
    light: Light | None = None  # None: CANONICAL_LIGHT (v1's fixed light)

    def caption(self) -> str:
        """Canonical text, e.g. "a red cube", "an orange cone on top of a small blue sphere"."""
        parts = [with_article(self.objects[0].phrase())]
        if self.relation is not None:
            parts += [self.relation, with_article(self.objects[1].phrase())]
        return " ".join(parts)


def with_article(phrase: str) -> str:
    """"a red cube" / "an orange cube": how captions and prompts write an object phrase."""
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


# ---------------------------------------------------------------------------------------------------------- layout


ObjectSpec = tuple[str, ...]  # (colour, shape[, size_name[, pattern, pattern_colour]])


def make_object(color: str, shape: str, size_name: str = "", pattern: str = "", pattern_color: str = "", *,
                base: float = SINGLE_SIZE) -> Object:
    if shape not in SHAPE_PARAMS:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    if color not in COLORS:
        raise ValueError(f"unknown colour {color!r}; known: {', '.join(COLORS)}")
    if bool(pattern) != bool(pattern_color) or (pattern and pattern not in PATTERNS):
        raise ValueError(f"a pattern needs one of {', '.join(PATTERNS)} and a colour, got {pattern!r}, {pattern_color!r}")
    if pattern and (pattern_color not in COLORS or pattern_color == color):
        raise ValueError(f"pattern colour {pattern_color!r} must be a known colour other than the object's ({color!r})")
    scale = base * (SIZES[size_name] if size_name else 1.0)
    obj = Object(shape, color, COLORS[color], scale, (0.0, 0.0, 0.0), size_name)
    if pattern:
        obj.pattern, obj.pattern_color, obj.pattern_rgb = pattern, pattern_color, COLORS[pattern_color]
    return obj


def make_scene(first: ObjectSpec, second: ObjectSpec | None = None, relation: str | None = None) -> Scene:
    """Lay out the canonical scene from (colour, shape[, size_name[, pattern, pattern_colour]]) specs; `relation` is
    one of RELATIONS when `second` is given."""
    if (second is None) != (relation is None):
        raise ValueError("give both `second` and `relation`, or neither")
    if second is None:
        return _layout([make_object(*first)], None)
    if relation not in RELATIONS:
        raise ValueError(f"unknown relation {relation!r}; known: {', '.join(RELATIONS)}")
    return _layout([make_object(*first, base=PAIR_SIZE), make_object(*second, base=PAIR_SIZE)], relation)


def _layout(objects: list[Object], relation: str | None, gap: float = NEXT_TO_GAP,
            offset: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> Scene:
    """Place sized objects (their `size` and `aspect` set) by `relation`, shift the scene by `offset`, then fit it.
    Zero offset and unit aspects give v1's layout exactly (`x * 1.0 == x` and `x + 0.0 == x` in floating point)."""
    if relation is not None:
        a, b = objects
        ha, wa = SHAPE_EXTENTS[a.shape][0] * a.size * a.aspect, SHAPE_EXTENTS[a.shape][1] * a.size
        hb, wb = SHAPE_EXTENTS[b.shape][0] * b.size * b.aspect, SHAPE_EXTENTS[b.shape][1] * b.size
        if relation == "on top of":
            top = hb + 2 * ha  # B centred at 0, A's centre at hb + ha; pair spans [-hb, hb + 2 ha]
            shift = (top - hb) / 2
            b.center = (0.0, 0.0, -shift)
            a.center = (0.0, 0.0, hb + ha - shift)
        else:  # next to: A on the left from the front (−y), bottoms on a common floor
            ya, yb = -(wa + gap / 2), wb + gap / 2
            mid = (ya - wa + yb + wb) / 2
            floor = -max(ha, hb)
            a.center = (0.0, ya - mid, floor + ha)
            b.center = (0.0, yb - mid, floor + hb)
    for o in objects:
        o.center = tuple(c + d for c, d in zip(o.center, offset))
    return _fit(Scene(objects, relation))


def bounding_radius(obj: Object) -> float:
    """Radius of a sphere around `obj.center` that holds the object (any yaw; a stretch > 1 widens it)."""
    return SHAPE_EXTENTS[obj.shape][2] * obj.size * max(1.0, obj.aspect)


def _fit(scene: Scene) -> Scene:
    """Scale the whole scene about the origin so it fits in MAX_SCENE_RADIUS."""
    radius = max(math.sqrt(sum(c * c for c in o.center)) + bounding_radius(o) for o in scene.objects)
    if radius > MAX_SCENE_RADIUS:
        k = MAX_SCENE_RADIUS / radius
        for o in scene.objects:
            o.size *= k
            o.center = tuple(c * k for c in o.center)
    return scene


# ------------------------------------------------------------------------------------- world v2: p(scene | caption)


def color_range(name: str) -> tuple[tuple[float, float], tuple[float, float]]:
    """((hue_lo, hue_hi), (lightness_lo, lightness_hi)) of a colour word in HLS (hue in turns, may wrap past 0 or 1;
    greys keep hue and saturation 0, so only their lightness varies)."""
    h, lightness, _ = colorsys.rgb_to_hls(*COLORS[name])
    return (h - HUE_JITTER, h + HUE_JITTER), (lightness - LIGHTNESS_JITTER, lightness + LIGHTNESS_JITTER)


def jitter_color(name: str, u_hue: float, u_lightness: float, jitter: float = 1.0) -> tuple[float, float, float]:
    """The colour word's rgb turned in hue and lightness by uniforms u ∈ [0, 1) (0.5 = the centre), `jitter` × the
    ranges of `color_range`; no offset returns COLORS[name] itself."""
    dh = jitter * (2 * u_hue - 1) * HUE_JITTER
    dl = jitter * (2 * u_lightness - 1) * LIGHTNESS_JITTER
    if dh == 0 and dl == 0:
        return COLORS[name]
    h, lightness, sat = colorsys.rgb_to_hls(*COLORS[name])
    rgb = colorsys.hls_to_rgb((h + dh) % 1.0, min(max(lightness + dl, 0.0), 1.0), sat)
    return tuple(min(max(c, 0.0), 1.0) for c in rgb)


def _uniform(lo: float, hi: float, u: float, jitter: float, centre: float) -> float:
    """centre + jitter · (the point u of [lo, hi] − centre): exactly `centre` when jitter = 0."""
    return centre + jitter * (lo + u * (hi - lo) - centre)


def _spec(obj: Object) -> ObjectSpec:
    return (obj.color, obj.shape, obj.size_name, obj.pattern, obj.pattern_color)


def jittered_scene(specs: list[ObjectSpec], relation: str | None, u: list[float], jitter: float = 1.0) -> Scene:
    """The scene of `specs` (as `make_scene` takes them) with every jitter drawn from N_DRAWS uniforms `u` in [0, 1)
    (scaled by `jitter`; 0 gives `make_scene`'s canonical scene). Unused draws are ignored, so a caller that always
    draws N_DRAWS keeps its random stream a fixed function of its seed."""
    if len(u) < N_DRAWS:
        raise ValueError(f"need {N_DRAWS} uniforms, got {len(u)}")
    base = SINGLE_SIZE if relation is None else PAIR_SIZE
    objects = []
    for k, spec in enumerate(specs):
        obj = make_object(*spec, base=base)
        us, ua, uy, uh, ul, uph, upl = u[k * _DRAWS_PER_OBJECT:(k + 1) * _DRAWS_PER_OBJECT]
        name = obj.size_name
        centre = SIZES[name] if name else 1.0
        obj.size = base * _uniform(*SIZE_RANGES[name], us, jitter, centre)
        obj.aspect = _uniform(*ASPECT_RANGE, ua, jitter, 1.0)
        obj.yaw = _uniform(*YAW_RANGE, uy, jitter, 0.0)
        obj.rgb = jitter_color(obj.color, uh, ul, jitter)
        if obj.pattern:
            obj.pattern_rgb = jitter_color(obj.pattern_color, uph, upl, jitter)
        objects.append(obj)
    ux, uy, uz, ugap, uaz, uel, ukey, ufill = u[2 * _DRAWS_PER_OBJECT:N_DRAWS]
    offset = tuple(_uniform(-j, j, v, jitter, 0.0) for j, v in zip(PLACEMENT_JITTER, (ux, uy, uz)))
    gap = _uniform(*NEXT_TO_GAP_RANGE, ugap, jitter, NEXT_TO_GAP)
    scene = _layout(objects, relation, gap, offset)
    if jitter != 0:
        scene.light = _jittered_light(uaz, uel, ukey, ufill, jitter)
    return scene


def _jittered_light(u_az: float, u_el: float, u_key: float, u_fill: float, jitter: float) -> Light:
    x, y, z = CANONICAL_LIGHT.key_dir
    az = math.atan2(y, x) + _uniform(-KEY_AZIMUTH_JITTER, KEY_AZIMUTH_JITTER, u_az, jitter, 0.0)
    el = math.atan2(z, math.hypot(x, y)) + _uniform(-KEY_ELEVATION_JITTER, KEY_ELEVATION_JITTER, u_el, jitter, 0.0)
    key_dir = (math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el))
    return Light(key_dir, _uniform(*KEY_STRENGTH_RANGE, u_key, jitter, CANONICAL_LIGHT.key_strength),
                 CANONICAL_LIGHT.fill_dir, _uniform(*FILL_STRENGTH_RANGE, u_fill, jitter, CANONICAL_LIGHT.fill_strength),
                 CANONICAL_LIGHT.ambient)


def sample_scene(caption: str | Scene, generator: torch.Generator | None = None, jitter: float = 1.0) -> Scene:
    """One scene drawn from p(scene | caption) (world v2).

    Every number is uniform in its declared range (all of them centred on the canonical scene that `parse` returns):
    size factor in SIZE_RANGES[size word], hue ± HUE_JITTER and lightness ± LIGHTNESS_JITTER around each colour word
    (object and pattern), aspect in ASPECT_RANGE, yaw in YAW_RANGE, the scene's shift within ± PLACEMENT_JITTER, the
    "next to" gap in NEXT_TO_GAP_RANGE, and the light (key azimuth ± KEY_AZIMUTH_JITTER, elevation
    ± KEY_ELEVATION_JITTER, key and fill strengths in their ranges); then the scene is fitted in MAX_SCENE_RADIUS as
    v1's. `jitter` scales every range (0 → the canonical scene). Exactly N_DRAWS uniforms are drawn from `generator`
    (CPU) per call. Raises what `parse` raises for a bad caption."""
    canonical = parse(caption) if isinstance(caption, str) else caption
    u = torch.rand(N_DRAWS, generator=generator, dtype=torch.float64).tolist()
    return jittered_scene([_spec(o) for o in canonical.objects], canonical.relation, u, jitter)


# --------------------------------------------------------------------------------------------------------- parsing


def _tokens(prompt: str) -> list[str]:
    """Words: runs of anything but spaces and ASCII punctuation, so "café" and "🍎" are words (unknown ones) rather
    than "caf" and nothing; runs of non-ASCII punctuation alone ("—", "“") are dropped."""
    words = re.findall(r"[^\s!-/:-@\[-`{-~]+", prompt.lower())
    return [w for w in words if not all(unicodedata.category(c).startswith("P") for c in w)]


def unknown_words(prompt: str, known: frozenset[str] = KNOWN_WORDS) -> list[str]:
    """Words of `prompt` outside the vocabulary `known` (V1_KNOWN_WORDS: world v1's), in order of appearance,
    without repeats."""
    seen: list[str] = []
    for t in _tokens(prompt):
        if t not in known and t not in seen:
            seen.append(t)
    return seen


def content_words(prompt: str) -> list[str]:
    """The prompt's words that name something the toy world can draw: a shape, a colour or a size."""
    return [t for t in _tokens(prompt) if t in _CONTENT_WORDS]


def split_view(prompt: str) -> tuple[str, str | None]:
    """("a red cube", "front") from "a red cube, front view"; the tag is None when there is no view suffix."""
    m = re.search(rf"[\s,;]*\b({'|'.join(VIEW_TAGS)})\s+view\W*$", prompt, flags=re.IGNORECASE)
    if m is None:
        return prompt, None
    return prompt[: m.start()], m.group(1).lower()


def parse(prompt: str) -> Scene:
    """Prompt → laid-out Scene. Raises UnknownWordsError (lists the words) or ParseError (bad structure)."""
    unknown = unknown_words(prompt)
    if unknown:
        raise UnknownWordsError(unknown)
    body, _ = split_view(prompt)
    tokens = [t for t in _tokens(body) if t not in _ARTICLES]
    if not tokens:
        raise ParseError(f"empty prompt {prompt!r}: expected e.g. 'a red cube' or 'a red cube on top of a blue sphere'")
    # Find the (single) relation phrase.
    rel_at, i = None, 0
    while i < len(tokens):
        match = next(((p, r) for p, r in _RELATION_PHRASES if tuple(tokens[i : i + len(p)]) == p), None)
        if match is None:
            i += 1
            continue
        if rel_at is not None:
            raise ParseError(f"only one relation per prompt is supported: {prompt!r}")
        rel_at = (i, len(match[0]), match[1])
        i += len(match[0])
    if rel_at is None:
        return make_scene(_parse_object(tokens, prompt))
    i, n, rel = rel_at
    first, second = _parse_object(tokens[:i], prompt), _parse_object(tokens[i + n :], prompt)
    return make_scene(first, second, RELATIONS[rel])


def _parse_object(tokens: list[str], prompt: str) -> ObjectSpec:
    """[size] colour shape [with colour pattern] → (colour, shape, size_name, pattern, pattern_colour); size and
    colour may come in either order."""
    expected = "expected '[small|large] <colour> <shape> [with <colour> stripes|checks|dots]'"
    if not tokens:
        raise ParseError(f"missing object in {prompt!r}: {expected}")
    pattern, pattern_color = "", ""
    if "with" in tokens:
        k = tokens.index("with")
        tokens, tail = tokens[:k], tokens[k + 1:]
        pattern, pattern_color = _parse_pattern(tail, prompt)
        if not tokens:
            raise ParseError(f"missing object before 'with' in {prompt!r}: {expected}")
    shape = _SHAPE_SYNONYMS.get(tokens[-1])
    if shape is None:
        raise ParseError(f"{' '.join(tokens)!r} in {prompt!r} does not end with a shape ({', '.join(SHAPES)}): {expected}")
    colors = [_COLOR_SYNONYMS[t] for t in tokens[:-1] if t in _COLOR_SYNONYMS]
    sizes = [_SIZE_SYNONYMS[t] for t in tokens[:-1] if t in _SIZE_SYNONYMS]
    others = [t for t in tokens[:-1] if t not in _COLOR_SYNONYMS and t not in _SIZE_SYNONYMS]
    if others:
        raise ParseError(f"unexpected {', '.join(repr(t) for t in others)} in {prompt!r}: {expected}")
    if len(colors) != 1:
        what = "missing colour" if not colors else "more than one colour"
        raise ParseError(f"{what} for {' '.join(tokens)!r} in {prompt!r}: {expected} (colours: {', '.join(COLORS)})")
    if len(sizes) > 1:
        raise ParseError(f"more than one size for {' '.join(tokens)!r} in {prompt!r}: {expected}")
    if pattern and pattern_color == colors[0]:
        raise ParseError(f"{pattern_color} {pattern} on a {colors[0]} {shape} in {prompt!r} would not show: "
                         f"give the pattern another colour")
    return colors[0], shape, sizes[0] if sizes else "", pattern, pattern_color


def _parse_pattern(tail: list[str], prompt: str) -> tuple[str, str]:
    """The words after "with": exactly <colour> <pattern> → (pattern, pattern_colour)."""
    expected = f"expected 'with <colour> {'|'.join(PATTERNS)}'"
    if "with" in tail or "and" in tail or sum(t in _PATTERN_SYNONYMS for t in tail) > 1:
        raise ParseError(f"more than one pattern for one object in {prompt!r}: one object takes one pattern")
    if not tail or tail[-1] not in _PATTERN_SYNONYMS:
        raise ParseError(f"{' '.join(['with', *tail])!r} in {prompt!r} does not end with a pattern: {expected}")
    colors = [_COLOR_SYNONYMS[t] for t in tail[:-1] if t in _COLOR_SYNONYMS]
    others = [t for t in tail[:-1] if t not in _COLOR_SYNONYMS]
    if others:
        raise ParseError(f"unexpected {', '.join(repr(t) for t in others)} in {prompt!r}: {expected}")
    if len(colors) != 1:
        what = "missing colour" if not colors else "more than one colour"
        raise ParseError(f"{what} for the pattern in {prompt!r}: {expected} (colours: {', '.join(COLORS)})")
    return _PATTERN_SYNONYMS[tail[-1]], colors[0]
