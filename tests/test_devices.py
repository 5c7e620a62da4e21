"""How a run resolves "auto" into a device and a dtype (dreammapping.devices)."""

from __future__ import annotations

import pytest
import torch

from dreammapping import devices
from dreammapping.devices import check_device, resolve_device, resolve_dtype
from dreammapping.errors import ConfigError
from dreammapping.priors import DiffusionPrior

CPU = torch.device("cpu")


def test_named_dtypes_are_taken_as_given():
    assert resolve_dtype("float32", CPU, "embedded") is torch.float32
    assert resolve_dtype("bfloat16", CPU, "some/model") is torch.bfloat16
    assert resolve_dtype("float16") is torch.float16


def test_auto_dtype_is_bf16_only_for_the_embedded_prior_on_a_cpu_with_native_bf16(monkeypatch):
    monkeypatch.setattr(devices, "native_cpu_bf16", lambda: True)
    assert resolve_dtype("auto", CPU, "embedded") is torch.bfloat16
    assert resolve_dtype("auto", CPU, "stabilityai/stable-diffusion-2-1-base") is None  # not measured: fp32
    assert resolve_dtype("auto", torch.device("cuda"), "embedded") is None  # the prior's fp16
    assert resolve_dtype("auto") is None
    monkeypatch.setattr(devices, "native_cpu_bf16", lambda: False)  # emulated bf16 is slower than fp32
    assert resolve_dtype("auto", CPU, "embedded") is None


def test_embedded_prior_in_bf16_predicts_the_noise_of_the_fp32_prior():
    # The reference is the same prior in fp32: bf16 keeps ~3 significant digits, so the ε-prediction (a unit-scale
    # tensor) may differ by ~1 % but not more; the output comes back as float32 for the guidance code.
    fp32 = DiffusionPrior.from_pretrained("embedded", device="cpu", dtype=torch.float32)
    bf16 = DiffusionPrior.from_pretrained("embedded", device="cpu", dtype=torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, fp32.resolution, fp32.resolution, generator=g)
    t = torch.tensor([50, 300, 600, 950])
    out = {}
    for name, prior in (("fp32", fp32), ("bf16", bf16)):
        emb = prior.encode_text("a blue cone", view_dependent=False)
        out[name] = prior.eps(x, t, emb.plain.expand(4, -1, -1))
    assert out["bf16"].dtype is torch.float32
    rel = ((out["bf16"] - out["fp32"]).norm() / out["fp32"].norm()).item()
    assert 0 < rel < 0.03, rel  # not the same computation, yet the same prediction


def test_auto_device_and_checks():
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_device("cpu")
    with pytest.raises(ConfigError, match="not a torch device"):
        check_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            check_device("cuda")


def test_native_bf16_is_what_torch_reports_and_no_when_torch_cannot_say(monkeypatch):
    assert devices.native_cpu_bf16() == bool(torch.cpu._is_amx_tile_supported()
                                             or torch.cpu._is_avx512_bf16_supported())
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    assert devices.native_cpu_bf16() is False
