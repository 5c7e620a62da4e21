"""Start-up: what importing the package, `dreammapping --help` and the generate path load (docs/performance.md,
"Start-up"). Each check runs in a fresh interpreter and reads its sys.modules: the heavy libraries are loaded only
by the code that needs them (the prior's loading imports diffusers and transformers; the app viser; …)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dreammapping

SRC = str(Path(dreammapping.__file__).resolve().parents[1])
# heavy or optional libraries: none of them is needed before a run loads its prior
# safetensors is not here: 5 ms to import, and the NeRF scene (a config choice) reads and writes its file with it
HEAVY = ("diffusers", "transformers", "torchvision", "imageio", "imageio_ffmpeg", "peft", "accelerate", "scipy",
         "sympy", "torch._dynamo", "huggingface_hub", "PIL", "viser", "ray", "trimesh", "skimage",
         "matplotlib", "plyfile", "open_clip", "clip")


def loaded_after(code: str) -> list[str]:
    """The HEAVY modules (and torch) that `code` leaves in sys.modules of a fresh interpreter."""
    probe = (f"import json, sys\n{code}\n"
             f"print(json.dumps(sorted(m for m in {HEAVY + ('torch',)!r} if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", probe], env={**os.environ, "PYTHONPATH": SRC}, capture_output=True,
                         text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_the_package_loads_nothing_heavy_not_even_torch():
    # not even torch: the package must run before torch to choose OpenMP's wait policy (dreammapping/__init__.py)
    assert loaded_after("import dreammapping") == []


def test_help_loads_nothing_heavy():
    code = ("import contextlib, io\nfrom dreammapping.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n    code = main(['--help'])\n"
            "assert code == 0 and 'generate' in out.getvalue()")
    assert loaded_after(code) == []


def test_the_generate_path_loads_torch_but_no_heavy_extra_before_the_prior():
    # `dreammapping generate --help` imports the whole generate path (train and what it imports) and tyro
    code = ("import contextlib, io\nfrom dreammapping.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "    try:\n        main(['generate', '--help'])\n    except SystemExit as e:\n        assert e.code == 0\n"
            "assert '--iterations' in out.getvalue()")
    assert loaded_after(code) == ["torch"]


def test_the_probe_sees_an_import():
    # the check above can fail: a module imported by the code is reported
    assert loaded_after("import torch, PIL") == ["PIL", "torch"]
