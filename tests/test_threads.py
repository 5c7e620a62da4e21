"""Threads by evidence (dreammapping.threads): the calibration's key, its choice (a measured win with margin, ties →
one thread), its cache (a corrupt file is ignored with one warning) and its bounds (never more threads than cores)."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from dreammapping import threads as TH
from dreammapping.priors import DiffusionPrior

KEY = TH.CalibrationKey(cpu="AMD EPYC", cores=2, torch="2.13.0", prior="0123456789abcdef", dtype="float32",
                        images=8, size=32)


@pytest.fixture
def tiny_prior(tmp_path_factory):
    from conftest import build_tiny_pipeline

    folder = build_tiny_pipeline(tmp_path_factory.mktemp("tiny-prior"))
    return DiffusionPrior.from_pretrained(str(folder), device="cpu", dtype=torch.float32)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DREAMMAPPING_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(TH.RECALIBRATE, raising=False)
    return tmp_path / "cache" / "threads.json"


def sleeping_call(ms_per_thread_count: dict[int, float]):
    """A 'prior call' whose duration depends on torch's thread count: a known answer for the calibration."""
    return lambda: time.sleep(ms_per_thread_count[torch.get_num_threads()] / 1000)


# ------------------------------------------------------------------------------------------------ the key
def test_every_field_of_the_key_changes_its_digest():
    digests = {KEY.digest()}
    for field, other in (("cpu", "Intel Xeon"), ("cores", 4), ("torch", "2.14.0"), ("prior", "fedcba9876543210"),
                         ("dtype", "bfloat16"), ("images", 16), ("size", 64)):
        digests.add(dataclasses.replace(KEY, **{field: other}).digest())
    assert len(digests) == 8
    assert dataclasses.replace(KEY).digest() == KEY.digest()  # equal keys, equal digests


def test_prior_hash_follows_the_unet_config_not_its_bookkeeping():
    config = {"sample_size": 32, "block_out_channels": [32, 64], "_diffusers_version": "0.30.0"}
    same = {**config, "_diffusers_version": "0.31.0", "_name_or_path": "/elsewhere"}
    assert TH.prior_hash("embedded", config) == TH.prior_hash("embedded", same)
    assert TH.prior_hash("embedded", config) != TH.prior_hash("embedded", {**config, "block_out_channels": [64, 64]})
    assert TH.prior_hash("embedded", config) != TH.prior_hash("other", config)


def test_the_key_of_a_prior_describes_its_call(tiny_prior):
    key = TH.calibration_key(tiny_prior, batch=4)
    assert key.images == 8 and key.size == 16 and key.dtype == "float32" and key.torch == torch.__version__
    assert key.cores == TH.allowed_cores() and key.cpu == TH.cpu_model()
    assert key.prior == TH.prior_hash(tiny_prior.name, dict(tiny_prior.unet.config))
    assert TH.calibration_key(tiny_prior, batch=2).digest() != key.digest()


# ------------------------------------------------------------------------------------------------ the choice
def test_more_threads_need_a_win_by_the_margin():
    assert TH.choose_threads({1: [1.0, 1.0, 1.0], 2: [0.85, 0.86, 0.84]}) == 2  # 15% faster
    assert TH.choose_threads({1: [1.0, 1.0, 1.0], 2: [0.95, 0.94, 0.96]}) == 1  # 5%: inside the margin
    assert TH.choose_threads({1: [1.0, 1.0, 1.0], 2: [0.95, 0.94, 0.96]}, margin=0.04) == 2
    assert TH.choose_threads({1: [1.0, 1.0, 1.0], 2: [1.2, 1.3, 1.1]}) == 1  # slower
    # medians, not means: one fast outlier does not make a win
    assert TH.choose_threads({1: [1.0, 1.0, 1.0], 2: [0.1, 1.0, 1.1]}) == 1
    # the fastest of several counts, if it wins
    assert TH.choose_threads({1: [1.0], 2: [0.7], 4: [0.5], 8: [0.6]}) == 4
    with pytest.raises(ValueError):
        TH.choose_threads({2: [0.5]})


def test_ties_are_one_thread():
    assert TH.choose_threads({1: [1.0, 1.0], 2: [1.0, 1.0]}) == 1
    assert TH.choose_threads({1: [1.0], 2: [1.0], 4: [1.0]}, margin=0.0) == 1
    assert TH.choose_threads({1: [1.0], 2: [0.5], 4: [0.5]}) == 2  # a tie above one: the fewer threads


@given(st.dictionaries(st.integers(1, 16), st.lists(st.floats(0.01, 10.0), min_size=1, max_size=5), min_size=1),
       st.floats(0.0, 0.5))
def test_a_choice_above_one_thread_is_always_a_win_by_the_margin(seconds, margin):
    seconds.setdefault(1, [1.0])
    n = TH.choose_threads(seconds, margin)
    medians = {k: sorted(v)[len(v) // 2] if len(v) % 2 else sum(sorted(v)[len(v) // 2 - 1:len(v) // 2 + 1]) / 2
               for k, v in seconds.items()}
    assert n in seconds
    if n > 1:
        assert medians[n] <= (1 - margin) * medians[1] + 1e-12
        assert medians[n] == min(medians.values())


def test_measure_interleaves_the_counts_and_restores_torchs(monkeypatch):
    monkeypatch.setattr(TH, "allowed_cores", lambda: 4)
    order = []
    before = torch.get_num_threads()
    seconds = TH.measure(lambda: order.append(torch.get_num_threads()), [1, 2, 4], rounds=3)
    assert order == [1, 2, 4] + [1, 2, 4] + [4, 2, 1] + [1, 2, 4]  # warm-up, then alternating order
    assert {n: len(s) for n, s in seconds.items()} == {1: 3, 2: 3, 4: 3}
    assert torch.get_num_threads() == before


def test_a_count_far_slower_at_its_warm_up_is_not_run_again():
    # the barrier trap on a loaded machine: four threads 10× slower; one warm-up call shows it, no more are spent
    order = []

    def call():
        order.append(torch.get_num_threads())
        time.sleep({1: 0.005, 2: 0.004, 4: 0.05}[torch.get_num_threads()])

    seconds = TH.measure(call, [1, 2, 4], rounds=4)
    assert order == [1, 2, 4] + [1, 2, 2, 1] * 2 and len(seconds[4]) == 1 and len(seconds[1]) == 4
    assert TH.choose_threads(seconds) != 4
    order.clear()
    seconds = TH.measure(call, [1, 4])  # only one thread left: done after the warm-ups
    assert order == [1, 4] and len(seconds[1]) == len(seconds[4]) == 1 and TH.choose_threads(seconds) == 1


def test_without_rounds_the_budget_decides(monkeypatch):
    calls = []
    TH.measure(lambda: calls.append(1) or time.sleep(0.01), [1, 2], budget_s=0.0)
    assert len(calls) == 2 + 2 * TH.MIN_ROUNDS  # warm-ups, then the minimum
    calls.clear()
    TH.measure(lambda: calls.append(1), [1, 2], budget_s=60.0)
    assert len(calls) == 2 + 2 * TH.MAX_ROUNDS  # fast calls, a long budget: the maximum


def test_a_calibration_measures_the_win():
    # known answer: a call that takes 30 ms on one thread and 6 ms on two
    key = dataclasses.replace(KEY, cores=2)
    calibration = TH.calibrate(sleeping_call({1: 30.0, 2: 6.0}), key, [1, 2], rounds=3)
    assert calibration.threads == 2
    assert calibration.medians()[1] > 0.025 and calibration.medians()[2] < calibration.medians()[1] * 0.9
    assert calibration.others_busy >= 0.0
    assert TH.calibrate(sleeping_call({1: 6.0, 2: 30.0}), key, [1, 2], rounds=3).threads == 1


# ------------------------------------------------------------------------------------------------ the bounds
@given(st.integers(1, 256), st.integers(1, 256))
def test_candidates_never_exceed_the_free_or_allowed_cores(free, allowed):
    original = TH.allowed_cores
    TH.allowed_cores = lambda: allowed
    try:
        counts = TH.candidate_counts(free)
    finally:
        TH.allowed_cores = original
    assert counts[0] == 1 and max(counts) == min(free, allowed)
    assert counts == sorted(set(counts))


def test_auto_threads_never_exceeds_the_cores_allowed(monkeypatch, cache, tiny_prior):
    monkeypatch.setattr(TH, "allowed_cores", lambda: 2)
    monkeypatch.setattr(TH, "prior_call", lambda prior, batch: sleeping_call({1: 20.0, 2: 4.0}))
    monkeypatch.setattr(TH, "cpu_ticks", lambda: None)  # no /proc/stat: nobody else counted busy
    assert TH.auto_threads(tiny_prior, 4, free=8, log=print) == 2  # 8 "free" but 2 allowed
    # a cache entry claiming more threads than the key's cores is not believed (measured again)
    key = TH.calibration_key(tiny_prior, 4)
    cache.write_text(json.dumps({"version": TH.VERSION, "entries": {
        key.digest(): {"key": dataclasses.asdict(key), "threads": 16}}}))
    calls = []
    monkeypatch.setattr(TH, "calibrate", lambda *a, **k: calls.append(1) or TH.Calibration(
        key=key, seconds={1: [1.0], 2: [0.5]}, threads=2, others_busy=0.0))
    assert TH.auto_threads(tiny_prior, 4, free=8, log=print) == 2 and calls == [1]


def test_one_free_core_is_one_thread_without_measuring(monkeypatch, cache, tiny_prior):
    monkeypatch.setattr(TH, "calibrate", lambda *a, **k: pytest.fail("measured with one free core"))
    assert TH.auto_threads(tiny_prior, 4, free=1, log=print) == 1
    assert not cache.exists()


# ------------------------------------------------------------------------------------------------ the cache
def test_a_calibration_is_cached_and_reused_until_recalibrated(monkeypatch, cache, tiny_prior):
    monkeypatch.setattr(TH, "allowed_cores", lambda: 2)
    monkeypatch.setattr(TH, "cpu_ticks", lambda: None)
    measured = []

    def call(prior, batch):
        measured.append(batch)
        return sleeping_call({1: 20.0, 2: 4.0})

    monkeypatch.setattr(TH, "prior_call", call)
    logs = []
    assert TH.auto_threads(tiny_prior, 4, free=2, log=logs.append) == 2
    assert len(measured) == 1 and cache.is_file() and "kept in" in logs[0]
    entry = json.loads(cache.read_text())["entries"][TH.calibration_key(tiny_prior, 4).digest()]
    assert entry["threads"] == 2 and set(entry["medians_ms"]) == {"1", "2"}
    assert TH.auto_threads(tiny_prior, 4, free=2, log=logs.append) == 2 and len(measured) == 1  # from the cache
    assert TH.auto_threads(tiny_prior, 4, free=1, log=logs.append) == 1  # the free cores still bound it
    monkeypatch.setenv(TH.RECALIBRATE, "1")
    assert TH.auto_threads(tiny_prior, 4, free=2, log=logs.append) == 2 and len(measured) == 2


def test_a_calibration_on_a_busy_machine_is_not_cached(monkeypatch, cache, tiny_prior):
    monkeypatch.setattr(TH, "allowed_cores", lambda: 2)
    monkeypatch.setattr(TH, "prior_call", lambda prior, batch: sleeping_call({1: 5.0, 2: 5.0}))
    ticks = iter([(0, 1000), (1000, 1000 + 1000)])  # every tick busy: with our CPU time ~0, two others' cores
    monkeypatch.setattr(TH, "cpu_ticks", lambda: next(ticks))
    logs = []
    assert TH.auto_threads(tiny_prior, 4, free=2, log=logs.append) == 1
    assert not cache.exists() and "not cached" in logs[0]


def test_a_corrupt_cache_is_ignored_with_one_warning_and_replaced(monkeypatch, cache, tiny_prior):
    monkeypatch.setattr(TH, "allowed_cores", lambda: 2)
    monkeypatch.setattr(TH, "cpu_ticks", lambda: None)
    monkeypatch.setattr(TH, "prior_call", lambda prior, batch: sleeping_call({1: 20.0, 2: 4.0}))
    cache.parent.mkdir(parents=True)
    for junk in (b"{not json", b"\xff\xfe\x00", b'{"version": 1, "entries": []}', b'[1, 2]',
                 b'{"version": 99, "entries": {}}'):
        cache.write_bytes(junk)
        logs = []
        assert TH.auto_threads(tiny_prior, 4, free=2, log=logs.append) == 2
        warnings = [line for line in logs if line.startswith("warning")]
        assert len(warnings) == 1 and str(cache) in warnings[0], (junk, logs)
        assert json.loads(cache.read_text())["version"] == TH.VERSION  # rewritten, readable
    # an entry of the wrong shape is measured again, not trusted, and without a warning for the file
    key = TH.calibration_key(tiny_prior, 4)
    cache.write_text(json.dumps({"version": TH.VERSION, "entries": {key.digest(): {"key": "x", "threads": "2"}}}))
    logs = []
    assert TH.auto_threads(tiny_prior, 4, free=2, log=logs.append) == 2
    assert not any(line.startswith("warning") for line in logs)


def test_the_real_prior_call_runs_at_each_count(tiny_prior):
    # the calibration's own call: the prior's CFG call on the batch, finite, at each thread count
    call = TH.prior_call(tiny_prior, 3)
    eps = call()[0]
    assert eps.shape == (3, tiny_prior.latent_channels, 16, 16) and torch.isfinite(eps).all()
    seconds = TH.measure(call, [1, 2], rounds=1)
    assert all(len(s) == 1 and s[0] > 0 for s in seconds.values())
