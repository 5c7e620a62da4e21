"""A fuzzer in the suite (issue 24): hypothesis over the .ply / .splat readers, the YAML config loader, the prompt
grammar and `generate`'s flag values. Every input ends in a result or one clear error (one line, a documented exit
code), never a traceback, and the files it reads are left as they were. Bounded here (DREAMMAPPING_FUZZ_EXAMPLES
examples per property, 25 by default: ~20-40 s on 2 shared cores); `python benchmarks/fuzz.py` runs many more."""

from __future__ import annotations

import os
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dreammapping import train as T
from dreammapping.config import build_config, check_config
from dreammapping.errors import GenerateError
from dreammapping.export import PlyError, check_splat, load_ply, save_ply
from dreammapping.formats import export, load_splat
from dreammapping.gaussians import sphere
from dreammapping.rundir import RUN_FILES
from dreammapping.toyworld import grammar

EXAMPLES = int(os.environ.get("DREAMMAPPING_FUZZ_EXAMPLES", "25"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=os.environ.get("DREAMMAPPING_FUZZ_RANDOM") is None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def one_line_message(error: BaseException) -> None:
    text = str(error)
    assert text and "\n" not in text and len(text) < 1000, repr(text[:2000])


def valid_ply_bytes() -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        return save_ply(Path(folder) / "g.ply", sphere(8, radius=0.5)).read_bytes()


PLY = valid_ply_bytes()
HEADER_END = PLY.index(b"end_header\n") + len(b"end_header\n")


@st.composite
def damaged_ply(draw) -> bytes:
    """A real .ply with a few bytes changed, cut, or extended; or its header over random bytes; or a header lie."""
    kind = draw(st.sampled_from(["flip", "truncate", "body", "header"]))
    data = bytearray(PLY)
    if kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    elif kind == "truncate":
        data = data[:draw(st.integers(0, len(data) - 1))]
    elif kind == "body":
        data = data[:HEADER_END] + draw(st.binary(max_size=2 * (len(data) - HEADER_END)))
    else:
        count = draw(st.sampled_from([b"0", b"1", b"7", b"9", b"-3", b"99999999999", b"x"]))
        data = bytearray(PLY.replace(b"element vertex 8", b"element vertex " + count))
    return bytes(data)


@FUZZ
@given(data=damaged_ply())
def test_ply_reader_and_export_never_traceback(tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("ply")
    path = folder / "in.ply"
    path.write_bytes(data)
    try:
        g = load_ply(path)
        check_splat(g, path)
        written, _ = export(path, "splat", out=folder / "out.splat")
        assert load_splat(written).means.shape == g.means.shape
    except PlyError as e:  # a ValueError that names the file, one line
        one_line_message(e)
        assert not (folder / "out.splat").exists()
    assert path.read_bytes() == data  # the input is read, never changed


@FUZZ
@given(data=st.binary(max_size=32 * 40), floats=st.lists(st.floats(width=32), min_size=8, max_size=8))
def test_splat_reader_never_tracebacks(tmp_path_factory, data, floats):
    folder = tmp_path_factory.mktemp("splat")
    record = struct.pack("<6f4B4B", *floats[:6], 255, 0, 0, 255, 128, 128, 128, 128)
    for name, payload in (("random.splat", data), ("record.splat", record * 3)):
        path = folder / name
        path.write_bytes(payload)
        try:
            g = load_splat(path)
            check_splat(g, path)
            assert bool(np.isfinite(g.means.numpy()).all())
        except PlyError as e:
            one_line_message(e)
        assert path.read_bytes() == payload


SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**30, 10**30), st.floats(allow_nan=True),
                    st.text(max_size=40))
KEYS = st.sampled_from(["iterations", "batch", "seed", "method", "guidance", "t_min", "t_max", "orbit", "radius",
                        "fovy", "lr", "sh_dc", "density", "refine_every", "resolution", "num_points", "prompt",
                        "init_options", "opacity", "threads", "turntable_size", "method_options", "bogus"])
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.dictionaries(KEYS, inner, max_size=4)), max_leaves=12)


@FUZZ
@given(document=st.one_of(st.dictionaries(KEYS, VALUES, max_size=6).map(yaml.safe_dump), st.text(max_size=200)))
def test_yaml_config_loader_gives_a_config_or_one_line(tmp_path_factory, document):
    path = tmp_path_factory.mktemp("yaml") / "c.yaml"
    path.write_bytes(document.encode())
    try:
        cfg = build_config("a red cube", config_file=path)
        check_config(cfg)
    except GenerateError as e:
        one_line_message(e)
    assert path.read_bytes() == document.encode()


@FUZZ
@given(prompt=st.one_of(st.text(max_size=80),
                        st.lists(st.sampled_from(["a", "red", "blue", "small", "cube", "cone", "on", "top", "of",
                                                  "next", "to", "large", ",", "front", "view", "🍎"]),
                                 max_size=12).map(" ".join)))
def test_prompt_grammar_parses_or_says_why(prompt):
    grammar.unknown_words(prompt)
    grammar.content_words(prompt)
    try:
        scene = grammar.parse(prompt)
        assert scene.objects
    except (grammar.ParseError, grammar.UnknownWordsError) as e:
        one_line_message(e)


FLAGS = ["--iterations", "--batch", "--seed", "--resolution", "--num-points", "--guidance.t-min",
         "--guidance.guidance-scale", "--lr.sh-dc", "--lr.position-final", "--orbit.overhead-probability",
         "--density.refine-every", "--init-options.opacity", "--threads", "--max-loss", "--turntable-size",
         "--sh-degree", "--render-backend", "--device", "--method", "--guidance.dca-cutoff"]
FLAG_VALUES = st.one_of(st.integers(-10**25, 10**25).map(str), st.floats().map(repr),
                        st.sampled_from(["nan", "inf", "-inf", "", "abc", "1e400", "0x10", "🍎", "--", "cpu", "vdm"]))


@pytest.fixture(scope="module")
def no_prior():
    """The prior never loads: a value that passes every check ends in exit 8 (prior missing), before any run."""
    from dreammapping import priors

    original = priors.DiffusionPrior.from_pretrained

    def missing(*args, **kwargs):
        raise priors.PriorNotFoundError("fuzz: no prior")

    priors.DiffusionPrior.from_pretrained = missing
    yield
    priors.DiffusionPrior.from_pretrained = original


@FUZZ
@given(pairs=st.lists(st.tuples(st.sampled_from(FLAGS), FLAG_VALUES), min_size=1, max_size=3))
def test_generate_flag_values_are_one_line_errors(no_prior, tmp_path_factory, capfd, pairs):
    out = tmp_path_factory.mktemp("cli") / "run"
    argv = ["a red cube", "--out", str(out)] + [x for flag, value in pairs for x in (flag, value)]
    capfd.readouterr()
    code = T.cli_generate(argv)
    err = capfd.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("dreammapping generate:")]
    assert code in (T.EXIT_USAGE, T.EXIT_UNKNOWN_METHOD, T.EXIT_PRIOR), (argv, code, err)
    assert len(errors) == 1 and "Traceback" not in err, (argv, err)
    assert not (out.exists() and any(p.name in RUN_FILES for p in out.iterdir()))  # nothing of a run written
