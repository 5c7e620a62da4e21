"""benchmarks/gpu_check.py's dry run (tiny models, CPU) goes through every section and reports sane numbers."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path, monkeypatch):
    path = Path(__file__).parents[1] / "benchmarks" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    assert module.main(["--dry-run", "--out", str(tmp_path), "--repeats", "1"]) == 0
    info = json.loads((tmp_path / "gpu_check.json").read_text())
    assert info["preset"]["init_used"] == "shap-e" and info["preset"]["it_per_s"] > 0
    assert info["render"]["rgb_max_abs"] < 1e-4 and min(info["render"]["grad_cosine"].values()) > 0.999
    assert all("error" not in row and row["max_abs_diff"] < 1e-4 for row in info["compile"])
