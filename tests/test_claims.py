"""benchmarks/claims.py's pure parts: the order of the work, what counts as done (resumability), the bootstrap
CI on known cases, paired differences and verdicts, and the report from records alone. No training here."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def claims():
    spec = importlib.util.spec_from_file_location("claims_bench", REPO / "benchmarks" / "claims.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["claims_bench"] = module
    spec.loader.exec_module(module)
    return module


def plan_in(claims, tmp_path, **kw):
    return claims.Plan(root=tmp_path / "runs", records=tmp_path / "records", **kw)


# ---- the plan -------------------------------------------------------------------------------------------------
def test_prompts_hold_every_held_out_pair_and_ten_single_objects(claims):
    from dreammapping.toyworld import grammar

    assert len(set(claims.PROMPTS)) >= 10
    for color, shape in grammar.HELD_OUT:
        assert any(p.endswith(f" {color} {shape}") for p in claims.PROMPTS), (color, shape)
    for p in claims.PROMPTS:
        assert len(grammar.parse(p).objects) == 1


def test_guidance_scale_is_the_papers_7_5_in_diffusers_form(claims):
    """Paper Eq. 4: ε_c + s(ε_c − ε_u) = ε_u + (s + 1)(ε_c − ε_u)."""
    eu, ec = np.array([0.3, -1.0]), np.array([0.5, 2.0])
    paper = ec + claims.PAPER_CFG * (ec - eu)
    ours = eu + claims.GUIDANCE_SCALE * (ec - eu)
    assert np.allclose(paper, ours)


def test_jobs_are_seed_major_paired_and_complete(claims, tmp_path):
    plan = plan_in(claims, tmp_path)
    jobs = plan.jobs()
    core = [j for j in jobs if j.variant in claims.CORE]
    assert len(core) == len(claims.PROMPTS) * len(claims.CORE) * len(claims.SEEDS) == len(set(core))
    seeds = [j.seed for j in core]
    assert seeds == sorted(seeds)  # all of seed 0 before any of seed 1
    baselines = [k for k, j in enumerate(jobs) if j.variant in claims.BASELINES]
    last_seed0 = max(k for k, j in enumerate(jobs) if j.seed == 0 and j.variant in claims.CORE)
    assert baselines and min(baselines) > last_seed0 and all(jobs[k].seed == 0 for k in baselines)
    # then seed 0's ablations on the baselines' prompts, then seed 1
    ablations = [k for k, j in enumerate(jobs) if j.variant in claims.ABLATIONS and j.seed == 0]
    assert ablations == list(range(max(baselines) + 1, max(baselines) + 1 + len(ablations)))
    assert {jobs[k].prompt for k in ablations} == set(claims.BASELINE_PROMPTS)
    assert jobs[max(ablations) + 1].seed == 1
    # the first block: SDS and VDM+DCA300 on its three prompts before anything else
    assert [j.variant for j in jobs[:6]] == ["sds", "vdm+dca300"] * 3
    assert len({j.prompt for j in jobs[:6]}) == 3
    # after each block every prompt of it has every core variant (paired)
    block = jobs[:3 * len(claims.CORE)]
    for prompt in {j.prompt for j in block}:
        assert {j.variant for j in block if j.prompt == prompt} == set(claims.CORE)


def test_only_variants_keeps_exactly_those_jobs_in_plan_order(claims, tmp_path):
    every = plan_in(claims, tmp_path).jobs()
    ulite = plan_in(claims, tmp_path, only_variants=("vdm+dca300+ulite",)).jobs()
    assert ulite == [j for j in every if j.variant == "vdm+dca300+ulite"]
    assert {(j.prompt, j.seed) for j in ulite} == {(p, s) for p in claims.BASELINE_PROMPTS for s in claims.ABLATION_SEEDS}
    # no job another runner (without the ablations) would do
    assert not set(ulite) & set(plan_in(claims, tmp_path, ablations=()).jobs())
    with pytest.raises(ValueError, match="unknown variant"):
        plan_in(claims, tmp_path, only_variants=("vdm+dca301",)).jobs()


def test_the_paper_faithful_operator_variant_reaches_vdm_config(claims, tmp_path):
    from dreammapping.train import build_config, method_config

    opts = claims.train_options(plan_in(claims, tmp_path), claims.Job("a red cube", "vdm+dca300+ulite", 0))
    c = method_config(build_config("a red cube", preset="cpu", **opts))
    assert (c.operator_size, c.operator_init, c.dca, c.dca_cutoff, c.guidance_scale) == ("ulite", "random", True, 300, 8.5)


def test_train_options_apply_the_variant_and_the_scale(claims, tmp_path):
    plan = plan_in(claims, tmp_path)
    opts = claims.train_options(plan, claims.Job("a red cube", "vdm+dca100", 2))
    assert opts["method"] == "vdm" and opts["seed"] == 2 and opts["iterations"] == plan.iterations
    assert opts["method_options"]["vdm"] == {"dca": True, "dca_cutoff": 100, "guidance_scale": claims.GUIDANCE_SCALE}
    from dreammapping.train import build_config, method_config

    cfg = build_config("a red cube", preset="cpu", **opts)
    assert method_config(cfg).dca_cutoff == 100 and method_config(cfg).guidance_scale == 8.5
    # the records' schedule and dtype stay pinned whatever the cpu preset becomes
    d = cfg.scene.density
    assert (cfg.iterations, d.refine_start, d.refine_stop, d.refine_every, cfg.dtype, cfg.threads) == \
        (300, 100, 250, 50, "float32", 1)
    lr = cfg.scene.lr
    assert (lr.position_init, lr.position_final, lr.opacity_logits, lr.sh_dc) == (2e-3, 2e-4, 5e-2, 2e-2)


def test_shards_split_the_jobs_without_overlap(claims, tmp_path):
    jobs = plan_in(claims, tmp_path).jobs()
    parts = [claims.select_shard(jobs, f"{i}/3") for i in range(3)]
    assert sum(map(len, parts)) == len(jobs) and set().union(*map(set, parts)) == set(jobs)
    with pytest.raises(ValueError):
        claims.select_shard(jobs, "3/3")


# ---- resumability ---------------------------------------------------------------------------------------------
def write_record(claims, plan, job, version=None, **metrics):
    final = {"iou": 0.8, "color_error": 0.1, **metrics}
    record = {"prompt": job.prompt, "seed": job.seed, "variant": job.variant, "iterations": plan.iterations,
              "metrics_version": claims.METRICS_VERSION if version is None else version,
              "final": final, "snapshots": {str(plan.iterations): final},
              "timings": {"sec_per_it": 0.3, "train_seconds": 90.0}}
    plan.records.mkdir(parents=True, exist_ok=True)
    plan.record_path(job).write_text(json.dumps(record))
    return record


def test_status_tells_done_score_resume_and_train_apart(claims, tmp_path):
    plan = plan_in(claims, tmp_path)
    done, score, resume, fresh = plan.jobs()[:4]
    write_record(claims, plan, done)
    d = plan.run_dir(score)
    d.mkdir(parents=True)
    (d / "gaussians.ply").write_bytes(b"ply")
    (d / "metrics.json").write_text(json.dumps({"iterations": plan.iterations}))
    r = plan.run_dir(resume)
    r.mkdir(parents=True)
    (r / "checkpoint.pt").write_bytes(b"x")
    (r / "config.yaml").write_text("prompt: x\n")
    assert [claims.status(plan, j) for j in (done, score, resume, fresh)] == ["done", "score", "resume", "train"]
    # a stale record (older metrics) of a finished run is rescored, never retrained
    write_record(claims, plan, score, version=claims.METRICS_VERSION - 1)
    assert claims.status(plan, score) == "score"
    # a run trained for another budget is not finished
    (d / "metrics.json").write_text(json.dumps({"iterations": plan.iterations - 1}))
    assert claims.status(plan, score) == "train"
    # an unreadable record counts as missing
    plan.record_path(done).write_text("{not json")
    assert claims.status(plan, done) == "train"


def test_a_rerun_skips_finished_records_and_does_only_what_is_missing(claims, tmp_path, monkeypatch):
    plan = plan_in(claims, tmp_path, prompts=("a red cube",), seeds=(0,), baselines=())
    jobs = plan.jobs()
    write_record(claims, plan, jobs[0])
    calls = []
    monkeypatch.setattr(claims, "train_job", lambda plan, job, resume, log=print: calls.append(("train", job, resume)))

    def fake_score(plan, job):
        calls.append(("score", job))
        return write_record(claims, plan, job, hf_noise=0.01)

    monkeypatch.setattr(claims, "score_job", fake_score)
    monkeypatch.setattr(claims, "save_views", lambda plan, job: None)
    assert claims.run(plan, log=lambda m: None) == 0
    trained = [c[1] for c in calls if c[0] == "train"]
    assert jobs[0] not in trained and trained == jobs[1:]
    calls.clear()
    assert claims.run(plan, log=lambda m: None) == 0 and calls == []  # everything done: nothing to do


# ---- statistics -----------------------------------------------------------------------------------------------
def test_bootstrap_ci_of_a_constant_is_that_constant(claims):
    assert claims.bootstrap_ci([0.25] * 7) == pytest.approx((0.25, 0.25, 0.25))
    assert claims.bootstrap_ci([1.5]) == (1.5, 1.5, 1.5)
    assert all(math.isnan(v) for v in claims.bootstrap_ci([]))


def test_bootstrap_ci_matches_the_normal_theory_interval_on_a_large_sample(claims):
    x = np.random.default_rng(1).normal(2.0, 1.0, size=400)
    mean, lo, hi = claims.bootstrap_ci(x)
    half = 1.96 * x.std(ddof=1) / math.sqrt(x.size)
    assert mean == pytest.approx(x.mean())
    assert lo == pytest.approx(x.mean() - half, abs=0.15 * half) and hi == pytest.approx(x.mean() + half, abs=0.15 * half)
    assert claims.bootstrap_ci(x) == (mean, lo, hi)  # fixed seed: reproducible


def test_paired_differences_use_only_complete_pairs(claims):
    recs = []
    for (prompt, seed, variant, err) in [("a", 0, "sds", 0.3), ("a", 0, "vdm+dca300", 0.2), ("b", 0, "sds", 0.5),
                                        ("b", 1, "vdm+dca300", 0.1), ("b", 1, "sds", 0.4)]:
        recs.append({"prompt": prompt, "seed": seed, "variant": variant, "final": {"color_error": err,
                     "saturation_error": -err}, "snapshots": {"1": {}}})
    assert sorted(claims.paired(recs, "vdm+dca300", "sds", "color_error")) == pytest.approx([-0.3, -0.1])
    assert sorted(claims.paired(recs, "vdm+dca300", "sds", "abs_saturation_error")) == pytest.approx([-0.3, -0.1])


def _recs(diffs_by_prompt, key="color_error"):
    """SDS at 0.5 and VDM+DCA300 at 0.5 + d for every (prompt, seed) difference d."""
    out = []
    for prompt, diffs in diffs_by_prompt.items():
        for seed, d in enumerate(diffs):
            out.append({"prompt": prompt, "seed": seed, "variant": "sds", "final": {key: 0.5}})
            out.append({"prompt": prompt, "seed": seed, "variant": "vdm+dca300", "final": {key: 0.5 + d}})
    return out


def test_primary_tests_are_judged_at_the_prompt_level_with_holm_and_tost(claims):
    truer = claims.Primary("x", "truer colour", "here", "color_error", "vdm+dca300", "sds", -1, 0.005)
    clear = {f"p{k}": [-0.10 - 0.01 * k] * 3 for k in range(6)}
    assert claims.judge([truer], _recs(clear))[0].verdict == "reproduced"
    opposite = {p: [-d for d in v] for p, v in clear.items()}
    assert claims.judge([truer], _recs(opposite))[0].verdict == "not reproduced (the opposite)"
    tiny = {f"p{k}": [(-1) ** k * 0.0005] * 3 for k in range(8)}  # ±0.0005 around 0, margin 0.005
    o = claims.judge([truer], _recs(tiny))[0]
    assert o.verdict == "not reproduced (equivalent within ±0.005)" and o.tost.equivalent
    noisy = {f"p{k}": [(-1) ** k * 0.05] * 3 for k in range(6)}
    assert claims.judge([truer], _recs(noisy))[0].verdict == "inconclusive at this n"
    few = {f"p{k}": [-0.1] * 3 for k in range(3)}
    assert claims.judge([truer], _recs(few))[0].verdict.startswith("not measurable here: 3 prompts")


def test_seeds_of_one_prompt_count_once(claims):
    """Thirty near-copy seeds of one sign on 5 prompts are 5 samples: one prompt of the other sign widens the
    interval to hold 0, where a seed-level bootstrap would have called it."""
    diffs = {f"p{k}": [-0.02 + 1e-4 * s for s in range(6)] for k in range(5)}
    diffs["p5"] = [0.08 + 1e-4 * s for s in range(6)]
    vals, prompts = claims.paired_by_prompt(_recs(diffs), "vdm+dca300", "sds", "color_error")
    e = claims.prompt_ci(vals, prompts)
    assert e.n_clusters == 6 and e.n == 36 and e.low < 0 < e.high
    naive = claims.bootstrap_ci(vals)
    assert naive[2] < e.high  # the seed-level interval is narrower


def test_holm_makes_the_family_stricter(claims):
    tests = [claims.Primary(str(k), "c", "here", "color_error", "vdm+dca300", "sds", -1, 0.005) for k in range(8)]
    borderline = {f"p{k}": [-0.01 + 0.012 * (k % 2)] * 2 for k in range(10)}  # mean −0.004, wide
    single = claims.judge(tests[:1], _recs(borderline))[0]
    family = claims.judge(tests, _recs(borderline))
    assert all(o.p_holm >= single.p_holm for o in family)


def test_report_is_made_from_records_alone_and_appends_the_probe_rows(claims, tmp_path):
    plan = plan_in(claims, tmp_path, prompts=("a red cube", "a blue cone", "a green sphere"), seeds=(0,))
    rng = np.random.default_rng(0)
    for job in plan.jobs():
        if job.variant in claims.CORE:
            m = {"iou": 0.8 + 0.01 * rng.random(), "psnr": 18.0, "ssim": 0.8, "color_error": 0.1 + 0.01 * rng.random(),
                 "saturation_error": 0.05, "edge_energy_ratio": 0.9, "edge_f_score": 0.7, "hf_noise": 0.02,
                 "attr_all": 0.5}
            write_record(claims, plan, job, **m)
    probe = tmp_path / "docs" / "vdm_probe.json"
    probe.parent.mkdir()
    probe.write_text(json.dumps({"claims": [{"claim": "4. correlation falls with t", "where": "§7.1",
                                             "measured": "corr(ε, ε_φ)", "numbers": "0.9 → 0.1",
                                             "verdict": "reproduced"}]}))
    from PIL import Image

    from dreammapping.train import slugify

    for job in plan.jobs():
        if job.variant in claims.CORE:
            Image.new("RGB", (32, 8), "red").save(plan.records / f"{job.name}.png")
            Image.new("RGB", (32, 8), "blue").save(plan.records / f"truth__{slugify(job.prompt, max_len=60)}.png")
    out = claims.write_report(claims.load_records(plan.records), tmp_path / "docs", "python benchmarks/claims.py report",
                              probe=probe, records_dir=plan.records)
    text = out.read_text()
    assert "`python benchmarks/claims.py report`" in text
    assert "| 1c | VDM + DCA gives truer colour than SDS" in text
    assert "| 4 | correlation falls with t | §7.1 | corr(ε, ε_φ): 0.9 → 0.1 | reproduced |" in text
    assert "3 complete (prompt, seed) pairs" in text
    assert "not measurable here: 3 prompts (< 5)" in text  # three prompts are too few for a verdict
    assert "prereg/claims_v2.md" in text and "cluster bootstrap" in text
    grid = Image.open(tmp_path / "docs" / "claims" / "views.png")  # 3 rows × (truth + 5 variants)
    assert grid.width >= 6 * 32 and "claims/views.png" in text


# ---- text-to-2D -------------------------------------------------------------------------------------------------
def test_text2d_jobs_are_seed_major_with_every_method_per_prompt(claims, tmp_path):
    plan = claims.Text2DPlan(records=tmp_path)
    jobs = plan.jobs()
    assert len(jobs) == len(set(jobs)) == len(plan.prompts) * len(plan.seeds) * len(claims.TEXT2D)
    assert [j.seed for j in jobs] == sorted(j.seed for j in jobs)
    first = jobs[:len(claims.TEXT2D)]
    assert {j.prompt for j in first} == {plan.prompts[0]} and [j.variant for j in first] == list(claims.TEXT2D)
    assert set(claims.TEXT2D) == {"sds", "vdm", "vdm+dca300", "csd", "nfsd", "ism", "vsd"}
    assert claims.TEXT2D["vdm"][1] == {"dca": False} and claims.TEXT2D["vdm+dca300"][1]["dca_cutoff"] == 300


def test_text2d_metrics_of_the_truth_renders_themselves_are_ideal_and_saturation_has_the_right_sign(claims, tmp_path):
    """The reference renders scored as if they were the result: no saturation / colour / edge / noise error;
    pushed away from grey they are over-saturated; blurred they have less edge energy."""
    import torch

    from dreammapping.toyworld import grammar
    from dreammapping.toyworld.classifier import AttributeClassifier

    plan = claims.Text2DPlan(records=tmp_path, references=8)
    classifier = AttributeClassifier.from_pretrained()
    ref = claims.text2d_reference(plan, "a red cube", classifier, 32)
    assert plan.reference_path("a red cube").is_file() and plan.reference_path("a red cube").with_suffix(".png").is_file()
    assert claims.text2d_reference(plan, "a red cube", classifier, 32) == ref  # read back, not recomputed
    # the same renders, re-made the way the reference makes them
    from dreammapping.cameras import OrbitConfig, sample_orbit
    from dreammapping.toyworld.dataset import OVERHEAD_PROBABILITY
    from dreammapping.toyworld.sdf import render_scenes

    cams = sample_orbit(8, 32, 32, OrbitConfig(overhead_probability=OVERHEAD_PROBABILITY), torch.Generator().manual_seed(0))
    rgb = render_scenes([grammar.parse("a red cube")], cams)[0].clamp(0, 1)
    images = rgb.permute(0, 3, 1, 2)
    m = claims.text2d_metrics(images, ref, classifier, grammar.parse("a red cube"))
    assert m["saturation_error"] == pytest.approx(0, abs=1e-9) and m["color_error"] == pytest.approx(0, abs=1e-9)
    assert m["edge_energy_ratio"] == pytest.approx(1.0) and m["hf_noise_excess"] == pytest.approx(0, abs=1e-9)
    assert m["coverage_error"] == pytest.approx(0, abs=1e-9) and m["attr_color"] == ref["attr_color"]
    grey = images.mean(1, keepdim=True)
    vivid = (grey + 1.5 * (images - grey)).clamp(0, 1)
    assert claims.text2d_metrics(vivid, ref, classifier, grammar.parse("a red cube"))["saturation_error"] > 0.02
    dull = (grey + 0.5 * (images - grey)).clamp(0, 1)
    assert claims.text2d_metrics(dull, ref, classifier, grammar.parse("a red cube"))["saturation_error"] < -0.02


def test_text2d_fid_is_zero_for_the_reference_features_and_the_shift_squared_for_a_shift(claims):
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(12, 3))
    refs = {"p": {"features": feats.tolist()}}
    recs = []
    for k in range(12):  # 12 units (seeds) of one prompt, one image each
        recs.append({"prompt": "p", "seed": k, "variant": "vdm+dca300", "features": [feats[k].tolist()]})
        recs.append({"prompt": "p", "seed": k, "variant": "sds", "features": [(feats[k] + [2.0, 0, 0]).tolist()]})
    out = claims.text2d_fid(recs, ["vdm+dca300", "sds"], refs, n_resamples=50)
    assert out["vdm+dca300"][0] == pytest.approx(0, abs=1e-6)
    assert out["sds"][0] == pytest.approx(4.0, rel=1e-6)
    mean, lo, hi = out["sds − vdm+dca300"]
    assert mean == pytest.approx(4.0, rel=1e-6) and lo <= 4.0 + 1e-6 and hi >= 4.0 - 1e-6


def test_report_has_the_text2d_claim_and_section_and_the_ablation_rows(claims, tmp_path):
    plan = plan_in(claims, tmp_path, prompts=("a red cube", "a blue cone", "a green sphere"), seeds=(0,))
    rng = np.random.default_rng(0)
    for job in plan.jobs():
        write_record(claims, plan, job, iou=0.8 + 0.01 * rng.random(), hf_noise=0.02 + 0.001 * rng.random())
    t2d, folder = [], plan.records / "text2d"
    folder.mkdir()
    for prompt in plan.prompts:
        ref = {"metrics_version": claims.TEXT2D_METRICS_VERSION, "features": rng.normal(size=(8, 4)).tolist(),
               "hf_interior": 0.01}
        (folder / claims.Text2DPlan(records=folder).reference_path(prompt).name).write_text(json.dumps(ref))
        for seed in (0, 1):
            for v in claims.TEXT2D:
                final = {k: float(rng.random()) for k in claims.TEXT2D_KEYS}
                final["attr_all"] = 1.0 if v == "vdm+dca300" else 0.0
                t2d.append({"prompt": prompt, "seed": seed, "variant": v, "steps": 100, "lr": 0.03, "snapshot_every": 50,
                            "final": final, "snapshots": {"50": final, "100": final},
                            "timings": {"cpu_sec_per_step": 0.1}, "features": rng.normal(size=(1, 4)).tolist()})
    out = claims.write_report(claims.load_records(plan.records), tmp_path / "docs", "cmd", records_dir=plan.records,
                              text2d_records=t2d)
    text = out.read_text()
    assert "## Text-to-2D (claim 6b)" in text
    assert "| `csd` | 3 / 6 | -1.000 [-1.000, -1.000] |" in text  # attribute accuracy, paired, 3 prompts / 6 pairs
    assert "Pooled classifier-feature FID" in text
    assert "## Ablation: Mψ as the paper builds it" in text and "| `vdm+dca300+ulite` | 3 / 3 |" in text


# ---- pinned records ---------------------------------------------------------------------------------------------
def test_a_record_is_pinned_and_rerun_from_its_json_alone_bit_for_bit(claims, tmp_path):
    """One tiny run (4 steps, 200 Gaussians) through the runner: its record pins commit, compute, versions, the
    prior's hash and the final .ply; `rerun_record` remakes it from the JSON alone with identical metrics and .ply."""
    plan = plan_in(claims, tmp_path, prompts=("a red cube",), seeds=(0,), core=("sds",), baselines=(), ablations=(),
                   iterations=4, snapshot_every=2, eval_views=2, eval_resolution=32,
                   train_overrides={"num_points": 200})
    assert claims.run(plan, log=lambda m: None) == 0
    record = json.loads(plan.record_path(plan.jobs()[0]).read_text())
    pin = record["pin"]
    assert pin["dtype"] == "float32" and pin["threads"] == 1 and pin["device"] == "cpu"
    assert len(pin["prior_sha256"]) == 64 and pin["torch"] and pin["diffusers"] and len(pin["commit"]) in (7, 40) \
        or pin["commit"] == "unknown"
    assert record["protocol"] == "claims-v1" and len(record["final_ply"]["sha256"]) == 64
    again = claims.rerun_record(json.loads(json.dumps(record)), tmp_path / "again", log=lambda m: None)
    assert again["final_ply_sha256"] == record["final_ply"]["sha256"]
    assert json.loads(json.dumps(again["final"])) == record["final"]
    assert again["pin"] == pin


def test_the_oracle_command_writes_a_pinned_record_scored_at_both_resolutions(claims, tmp_path):
    plan = plan_in(claims, tmp_path, prompts=("a red cube",), seeds=(0,), iterations=3, eval_views=2,
                   train_overrides={"num_points": 150})
    assert claims.run_oracle(plan, log=lambda m: None) == 0
    record = json.loads(claims.oracle_record_path(plan, "a red cube", 0).read_text())
    assert set(record["metrics"]) == {"32", "64"} and record["training_resolution"] == 32
    assert record["config"]["iterations"] == 3 and record["config"]["scene"]["gaussians"]["num_points"] == 150
    assert record["pin"]["dtype"] == "float32" and len(record["final_ply"]["sha256"]) == 64
    assert 0 <= record["metrics"]["32"]["iou"] <= 1 and "ssim_matched" in record["metrics"]["64"]
    assert claims.run_oracle(plan, log=lambda m: None) == 0  # done: nothing redone


def test_text2d_fid_with_fewer_samples_than_features_matches_the_reference_formula(claims):
    from dreammapping.metrics import feature_statistics, frechet_distance

    rng = np.random.default_rng(2)
    ref = rng.normal(size=(40, 8))
    refs = {"p": {"features": ref.tolist()}}
    recs = [{"prompt": "p", "seed": k, "variant": v, "features": [rng.normal(size=8).tolist()]}
            for k in range(4) for v in ("vdm+dca300", "sds")]
    out = claims.text2d_fid(recs, ["vdm+dca300", "sds"], refs, n_resamples=5)
    for v in ("vdm+dca300", "sds"):
        feats = np.asarray([r["features"][0] for r in recs if r["variant"] == v])
        expected = frechet_distance(*feature_statistics(feats), *feature_statistics(ref))
        assert out[v][0] == pytest.approx(expected, rel=1e-4)
