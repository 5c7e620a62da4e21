"""dreammapping batch on a tiny random prior: a local pool (and a local Ray instance) writes the same runs as running
them one by one; failures are retried once and reported; reruns skip finished runs; Ctrl-C leaves resumable runs;
bad prompts-file lines are reported with their numbers before anything runs."""

from __future__ import annotations

import csv
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from dreammapping import batch as B
from dreammapping import train as T
from dreammapping.export import load_ply

TINY = ["--iterations", "6", "--num-points", "200", "--init", "sphere", "--turntable-size", "16",
        "--turntable-frames", "3", "--log-every", "2", "--checkpoint-every", "2", "--background", "random"]


def batch(prompts: Path, out: Path, prior: Path, *extra) -> int:
    # one thread a run, as the references: a run left alone in the pool would otherwise get every core
    return B.cli_batch([str(prompts), "--out", str(out), "--prior", str(prior), "--workers", "2", "--no-progress",
                        "--threads", "1", *TINY, *map(str, extra)])


def reference_run(tmp_path: Path, prior: Path, prompt: str, seed: int, *extra) -> Path:
    """The same run made on its own, in this process, with `train` directly, on one thread as the batch's runs
    (another thread count sums in another order: equal runs, not bit-identical ones)."""
    run = tmp_path / "reference" / f"{T.slugify(prompt)}-{seed}"
    cfg, _ = T.parse_args([prompt, "--prior", str(prior), *TINY, "--seed", str(seed), "--out", str(run),
                           "--threads", "1", *map(str, extra)])
    T.train(cfg, run, progress=False)
    return run


def assert_same_run(got: Path, want: Path) -> None:
    a, b = (torch.load(r / "checkpoint.pt", weights_only=True) for r in (got, want))
    assert a["step"] == b["step"]
    for name, tensor in b["gaussians"].items():
        assert torch.equal(a["gaussians"][name], tensor), (got.name, name)
    ga, gb = load_ply(got / "gaussians.ply"), load_ply(want / "gaussians.ply")
    assert torch.equal(ga.means, gb.means) and torch.equal(ga.sh, gb.sh)
    assert [r.split(",")[:2] for r in (got / "loss.csv").read_text().splitlines()] == \
        [r.split(",")[:2] for r in (want / "loss.csv").read_text().splitlines()]


def read_csv(path: Path) -> dict[str, dict]:
    with path.open(newline="") as f:
        return {Path(row["run"]).name: row for row in csv.DictReader(f)}


def test_pool_runs_match_single_runs_retries_a_failure_and_skips_finished_runs(tiny_pixel_folder, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# two prompts, one in the toy world\na red cube\n\na corgi   # no ground truth\n")
    out = tmp_path / "out"
    blocked = out / "a-corgi-vdm-1"
    out.mkdir()
    blocked.write_text("a file where the run folder should go")  # this run cannot be written: it must fail

    code = batch(prompts, out, tiny_pixel_folder, "--seeds", 0, 1)
    err = capsys.readouterr().err
    assert code == B.EXIT_SOME_FAILED, err
    rows = read_csv(out / "summary.csv")
    assert set(rows) == {"a-red-cube-vdm-0", "a-corgi-vdm-0", "a-red-cube-vdm-1", "a-corgi-vdm-1"}
    failed = rows["a-corgi-vdm-1"]
    assert failed["status"] == "failed" and failed["attempts"] == "2" and "OutputError" in failed["error"]
    assert "a-corgi-vdm-1 failed" in err and "retrying" in err and "FAILED after 2 attempt(s)" in err
    for name in ("a-red-cube-vdm-0", "a-corgi-vdm-0", "a-red-cube-vdm-1"):
        assert rows[name]["status"] == "done" and rows[name]["attempts"] == "1", rows[name]
        assert float(rows[name]["train_seconds"]) > 0
    # ground-truth metrics for the toy-world prompt only, and they are evaluate's own numbers
    assert rows["a-red-cube-vdm-0"]["iou"] != "" and rows["a-corgi-vdm-0"]["iou"] == ""
    evaluation = json.loads((out / "a-red-cube-vdm-0" / "eval.json").read_text())
    assert float(rows["a-red-cube-vdm-0"]["iou"]) == pytest.approx(evaluation["metrics"]["iou"])
    assert evaluation["settings"]["clip"] is False and evaluation["settings"]["fid"] is False
    md = (out / "summary.md").read_text()
    assert "| `a-corgi-vdm-1` | a corgi | vdm | 1 | failed | 2 |" in md and "OutputError" in md

    # the rerun skips the three finished runs without touching them and makes the fourth
    blocked.unlink()
    stamps = {name: (out / name / "gaussians.ply").stat().st_mtime_ns for name in rows if name != "a-corgi-vdm-1"}
    assert batch(prompts, out, tiny_pixel_folder, "--seeds", 0, 1) == 0, capsys.readouterr().err
    rows = read_csv(out / "summary.csv")
    assert {n: r["status"] for n, r in rows.items()} == {"a-red-cube-vdm-0": "skipped", "a-corgi-vdm-0": "skipped",
                                                         "a-red-cube-vdm-1": "skipped", "a-corgi-vdm-1": "done"}
    assert all((out / n / "gaussians.ply").stat().st_mtime_ns == t for n, t in stamps.items())

    # every run is bitwise the run made on its own with the same seed
    for prompt in ("a red cube", "a corgi"):
        for seed in (0, 1):
            assert_same_run(out / f"{T.slugify(prompt)}-vdm-{seed}", reference_run(tmp_path, tiny_pixel_folder,
                                                                                   prompt, seed))


def test_a_changed_config_is_not_mistaken_for_a_finished_run(tiny_pixel_folder, tmp_path):
    run = reference_run(tmp_path, tiny_pixel_folder, "a red cube", 0)
    cfg = T.load_yaml_config(run / "config.yaml", T.GenerateConfig())
    assert B.run_state(run, cfg) == "finished"
    assert B.run_state(run, cfg.__class__(**{**cfg.__dict__, "threads": 7, "device": "cpu"})) == "finished"
    other = T.merge_config(cfg, {"iterations": 7})
    assert B.run_state(run, other) == "different"
    record = B.run_task(B.Task(str(run), other))  # refused, not overwritten
    assert record["status"] == "failed" and "another config" in record["error"]
    (run / "metrics.json").unlink()
    assert B.run_state(run, cfg) == "resumable"
    assert B.run_state(tmp_path / "nothing", cfg) == "fresh"


def test_ctrl_c_leaves_every_run_resumable_and_the_rerun_resumes(tiny_pixel_folder, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\na blue sphere\n")
    out = tmp_path / "out"
    # the Ctrl-C comes once both runs have a checkpoint (2 steps); 100 steps so that one run seldom finishes while
    # the other worker is still starting (40 sometimes did on a loaded machine) — and if it does, it must be "done"
    longer = ("--iterations", 100)
    runs = [out / "a-red-cube-vdm-0", out / "a-blue-sphere-vdm-0"]

    returned = threading.Event()

    def press_ctrl_c_once_both_runs_checkpointed():
        while not returned.is_set() and not all((r / "checkpoint.pt").is_file() for r in runs):
            time.sleep(0.05)
        if not returned.is_set():  # never signal pytest itself once the batch is over
            os.kill(os.getpid(), signal.SIGINT)  # the driver only, as `kill -INT`; it must stop its workers itself

    watcher = threading.Thread(target=press_ctrl_c_once_both_runs_checkpointed, daemon=True)
    watcher.start()
    try:
        code = batch(prompts, out, tiny_pixel_folder, "--evaluate", "none", *longer)
    finally:
        returned.set()
    watcher.join()
    err = capsys.readouterr().err
    assert code == T.EXIT_INTERRUPTED, err
    assert "rerun the same command to resume" in err and "Traceback" not in err
    rows = read_csv(out / "summary.csv")
    status = {name: r["status"] for name, r in rows.items()}
    assert "interrupted" in status.values() and set(status.values()) <= {"interrupted", "done"}, status
    steps = {}
    for run in runs:
        if status[run.name] == "interrupted":
            assert not (run / "gaussians.ply").exists()
            steps[run.name] = torch.load(run / "checkpoint.pt", weights_only=True)["step"]
            assert 0 < steps[run.name] < 100

    assert batch(prompts, out, tiny_pixel_folder, "--evaluate", "none", *longer) == 0, capsys.readouterr().err
    rows = read_csv(out / "summary.csv")
    for run in runs:
        if status[run.name] == "interrupted":
            assert rows[run.name]["status"] == "resumed" and int(rows[run.name]["resumed_from"]) == steps[run.name]
        else:
            assert rows[run.name]["status"] == "skipped"
        prompt = "a red cube" if "cube" in run.name else "a blue sphere"
        assert_same_run(run, reference_run(tmp_path, tiny_pixel_folder, prompt, 0, *longer))


def test_bad_prompts_file_lines_are_reported_with_their_numbers_before_anything_runs(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes("a red cube\n# fine\n\n   \na red dragon\n"
                        f"a {'very ' * 70}large cube\nA red cube!\na blue\tcone\na green\x07 torus\n".encode()
                        + b"a \xff cube\n")
    out = tmp_path / "out"
    code = B.cli_batch([str(prompts), "--out", str(out), "--no-progress"])  # the embedded prior: its vocabulary
    err = capsys.readouterr().err
    assert code == T.EXIT_USAGE
    lines = err.strip().splitlines()
    assert lines[0].startswith(f"dreammapping batch: {prompts}:5: ") and "'dragon'" in lines[0]
    assert lines[1].startswith(f"dreammapping batch: {prompts}:6: ") and "characters long" in lines[1]
    assert lines[2].startswith(f"dreammapping batch: {prompts}:7: ") and "line 1" in lines[2]
    assert lines[3].startswith(f"dreammapping batch: {prompts}:9: ") and "U+0007" in lines[3]
    assert lines[4].startswith(f"dreammapping batch: {prompts}:10: ") and "UTF-8" in lines[4]
    assert len(lines) == 5  # line 8 (a tab) and the blank / comment lines are fine
    assert not out.exists()
    (tmp_path / "good.txt").write_text("a red cube # a comment\n\na blue cone\n")
    assert B.read_prompts(tmp_path / "good.txt") == [B.PromptLine(1, "a red cube"), B.PromptLine(3, "a blue cone")]
    prompts.write_text("# nothing\n\n")
    assert B.cli_batch([str(prompts), "--out", str(out)]) == T.EXIT_USAGE
    assert "no prompts" in capsys.readouterr().err


def test_generate_options_reach_every_run_and_batch_options_are_not_mixed_up(tiny_pixel_folder, tmp_path,
                                                                               monkeypatch):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red cube\na corgi\n")
    args, configs = B.parse_batch_args([str(prompts), "--out", str(tmp_path / "o"), "--method", "sds", "vdm",
                                        "--seeds", "3", "4", "--prior", str(tiny_pixel_folder), "--iterations", "9",
                                        "--guidance.guidance-scale", "5"])
    assert list(configs) == ["sds", "vdm"] and args.seeds == [3, 4]
    assert all(c.iterations == 9 and c.method == m and c.guidance.guidance_scale == 5 for m, c in configs.items())
    tasks = B.plan_tasks(B.read_prompts(prompts, prior=str(tiny_pixel_folder)), configs, args.seeds, tmp_path / "o")
    assert [Path(t.run_dir).name for t in tasks[:4]] == ["a-red-cube-sds-3", "a-red-cube-vdm-3", "a-corgi-sds-3",
                                                         "a-corgi-vdm-3"] and len(tasks) == 8
    assert all(Path(t.run_dir).is_absolute() and t.config.out == t.run_dir for t in tasks)
    assert tasks[0].evaluate is not None and tasks[2].evaluate is None  # ground truth only for toy-world prompts
    with pytest.raises(T.ConfigError, match="--resume"):
        B.parse_batch_args([str(prompts), "--out", "o", "--resume", "x"])
    # without --method: the preset's; a second positional would be generate's prompt, which the file gives
    assert list(B.parse_batch_args([str(prompts), "--out", "o"])[1]) == ["vdm"]
    with pytest.raises(T.ConfigError, match="unexpected argument 'stray'"):
        B.parse_batch_args([str(prompts), "--out", "o", "stray"])
    # a .ply to start from, given relative to here, is made absolute in every task's scene (workers run elsewhere)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "start.ply").write_text("not read here")
    configs = {"vdm": T.build_config(None, init="start.ply")}
    task = B.plan_tasks(B.read_prompts(prompts, prior="a folder"), configs, [0], tmp_path / "o")[0]
    assert task.config.scene.init == str(tmp_path / "start.ply")


def test_local_ray_runs_match_single_runs_and_retry_a_failure(tiny_pixel_folder, tmp_path, capsys):
    pytest.importorskip("ray")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\na corgi\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a-corgi-vdm-1").write_text("not a folder")
    code = batch(prompts, out, tiny_pixel_folder, "--seeds", 0, 1, "--ray", "local")
    err = capsys.readouterr().err
    assert code == B.EXIT_SOME_FAILED, err
    rows = read_csv(out / "summary.csv")
    assert rows["a-corgi-vdm-1"]["status"] == "failed" and rows["a-corgi-vdm-1"]["attempts"] == "2"
    for name in ("a-red-cube-vdm-0", "a-corgi-vdm-0", "a-red-cube-vdm-1"):
        assert rows[name]["status"] == "done", rows[name]
    assert rows["a-red-cube-vdm-0"]["iou"] != ""
    for prompt, seed in (("a red cube", 0), ("a corgi", 0), ("a red cube", 1)):
        assert_same_run(out / f"{T.slugify(prompt)}-vdm-{seed}", reference_run(tmp_path, tiny_pixel_folder,
                                                                               prompt, seed))
    assert batch(prompts, out, tiny_pixel_folder, "--seeds", 0, "--ray", "local") == 0  # all finished: no Ray
    assert {r["status"] for r in read_csv(out / "summary.csv").values()} == {"skipped"}
