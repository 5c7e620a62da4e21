"""`batch --ray ADDRESS` across two Ray nodes on 127.0.0.1, the second killed mid-batch: every run still finishes
whole (issue 24). Marked slow (2-5 minutes on 2 shared cores: two raylets plus the runs), so not in the default run:
`pytest -m slow tests/test_ray_two_nodes.py`, or `python benchmarks/ray_two_nodes.py`."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("ray")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import ray_two_nodes  # noqa: E402


@pytest.mark.slow
def test_a_node_killed_mid_batch_loses_no_run(tmp_path):
    result = ray_two_nodes.run(tmp_path, iterations=60)
    assert ray_two_nodes.intact(result, 60) == [], result
