"""`batch --ray ADDRESS` across two Ray nodes on this machine, one of them killed mid-batch (issue 24).

A Ray head and a second raylet are started on 127.0.0.1 (`ray.cluster_utils.Cluster`, Ray's own way of running a
multi-node cluster on one machine), one CPU each, so the batch's runs are spread over both. Once every run has a
checkpoint, the second node is removed (its raylet and workers killed). The batch must still finish with exit 0 and
every run intact: the lost task fails, the batch retries it, and the retry resumes the run from its checkpoint on the
surviving node (checked: metrics.json, gaussians.ply and a loss.csv with every logged step exactly once).

    python benchmarks/ray_two_nodes.py            # ~2-5 minutes on 2 shared cores
    pytest -m slow tests/test_ray_two_nodes.py    # the same, as a test (marked slow: not in the default run)
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPTS = ["a red cube", "a blue sphere"]


def run(out: Path, iterations: int = 60, timeout: float = 900.0, log=print) -> dict:
    """Returns {"code", "runs": {name: {"steps", "files"}}, "seconds", "nodes_seen"}; raises on a timeout."""
    import ray
    from ray.cluster_utils import Cluster

    out.mkdir(parents=True, exist_ok=True)
    prompts = out / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    second = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    log(f"cluster at {cluster.address}: 2 nodes, 1 CPU each")
    t0 = time.time()
    batch = subprocess.Popen([sys.executable, "-m", "dreammapping.cli", "batch", str(prompts), "--out",
                              str(out / "runs"), "--ray", cluster.address, "--threads", "1", "--iterations",
                              str(iterations), "--checkpoint-every", "5", "--log-every", "5", "--turntable-size", "32",
                              "--turntable-frames", "4", "--evaluate", "none", "--no-progress"],
                             stderr=subprocess.PIPE, text=True)
    try:
        runs = out / "runs"
        while sum((d / "checkpoint.pt").exists() for d in runs.glob("*-vdm-0")) < len(PROMPTS):
            if batch.poll() is not None or time.time() - t0 > timeout:
                raise RuntimeError(f"the runs did not both start (exit {batch.poll()}): {batch.stderr.read()}")
            time.sleep(0.5)
        log(f"both runs have a checkpoint after {time.time() - t0:.0f} s: removing the second node")
        cluster.remove_node(second, allow_graceful=False)
        code = batch.wait(timeout=timeout)
        err = batch.stderr.read()
    finally:
        if batch.poll() is None:
            batch.kill()
        ray.shutdown()
        cluster.shutdown()
    result = {"code": code, "seconds": round(time.time() - t0, 1), "stderr": err, "runs": {}}
    for d in sorted((out / "runs").glob("*-vdm-0")):
        with (d / "loss.csv").open() as f:
            steps = [int(r["step"]) for r in csv.DictReader(f)]
        result["runs"][d.name] = {"steps": steps, "files": sorted(p.name for p in d.iterdir())}
    return result


def intact(result: dict, iterations: int) -> list[str]:
    """What is wrong with the batch's result ([] when every run finished whole)."""
    problems = [] if result["code"] == 0 else [f"batch exit {result['code']}: {result['stderr'][-500:]}"]
    if len(result["runs"]) != len(PROMPTS):
        problems.append(f"{len(result['runs'])} run folders, expected {len(PROMPTS)}")
    for name, r in result["runs"].items():
        if r["steps"] != list(range(5, iterations + 1, 5)):
            problems.append(f"{name}: loss.csv steps {r['steps']}")
        for needed in ("metrics.json", "gaussians.ply", "checkpoint.pt", "config.yaml"):
            if needed not in r["files"]:
                problems.append(f"{name}: no {needed}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=60)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        result = run(Path(folder), args.iterations)
    problems = intact(result, args.iterations)
    print(f"batch exit {result['code']} after {result['seconds']} s; runs: "
          + ", ".join(f"{k} ({len(v['steps'])} loss rows)" for k, v in result["runs"].items()))
    print("every run intact" if not problems else "PROBLEMS:\n  " + "\n  ".join(problems))
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
