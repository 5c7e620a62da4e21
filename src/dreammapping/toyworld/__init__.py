"""The toy world: a procedural world of coloured primitives with known 3D truth.

`grammar` turns prompts into scenes (and back), `sdf` renders scenes by batched sphere tracing with the 3D
renderer's camera model, `dataset` draws captioned renders on the fly (the embedded prior's training data).
"""

from dreammapping.toyworld.grammar import (
    COLORS, HELD_OUT, SHAPES, SIZES, Object, ParseError, Scene, UnknownWordsError, make_scene, parse, unknown_words,
)

__all__ = [
    "COLORS", "HELD_OUT", "SHAPES", "SIZES", "Object", "ParseError", "Scene", "UnknownWordsError", "make_scene",
    "parse", "unknown_words",
]
