"""The operator's own ability: VDM on a frozen image, where the best Mψ is known (docs/prereg/operator_ability.md).

Text-to-2D whose image never moves (`text2img(..., frozen=True)`): the renders' distribution q is a point mass at
one image z₀, so x_t = √ᾱ_t z₀ + √(1 − ᾱ_t) ε and ε = (x_t − √ᾱ_t z₀)/√(1 − ᾱ_t) is a function of x_t. Wherever
x_t ↦ ε_φ(x_t, t, y) is one-to-one, ε is a function of (ε_φ, t), so Mψ's target E_q[ε | ε_φ, t] is ε itself and the
optimal op_ratio is 0 (docs/vdm_analysis.md §3, "perfect operator"). Only Mψ trains; each step's op_ratio is
measured on a fresh (t, ε) draw before Mψ's update on it, so it is a held-out error.

    rows = run_frozen_probe(prior, "a red cube", VDM.Config(condition_on_t=True), steps=2000, seed=0)
    summary = summarise(rows, first=1500)            # op_ratio pooled over steps ≥ 1500 (ratio of sums), per band

`provenance()` pins a record to its run (commit, versions, threads, dtype, the prior's sha256).
"""

from __future__ import annotations

import hashlib
import math
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from dreammapping.guidance.vdm import T_BANDS, VDMConfig



@dataclass
class ProbeSummary:
    """Pooled over the probe's steps ≥ `first`: op_ratio as a ratio of sums (Σ‖Mψ − ε‖² / Σ‖ε_φ − ε‖²), per
    t band too, and the mean per-step cos(VDM, SDS)."""

    steps: int  # rows pooled
    op_ratio: float
    op_ratio_lo: float  # t < 300
    op_ratio_mid: float  # 300 ≤ t < 600
    op_ratio_hi: float  # t ≥ 600
    cos_sds: float


def frozen_truth_image(prior, prompt: str, seed: int = 0) -> Tensor:
    """One toy-world truth render of `prompt` from a random orbit view, [1,3,R,R] in [0,1] (the image a run that
    had converged on the truth would render)."""
    from dreammapping.cameras import OrbitConfig, sample_orbit
    from dreammapping.toyworld.grammar import parse
    from dreammapping.toyworld.sdf import render_scenes

    cams = sample_orbit(1, prior.resolution, prior.resolution, OrbitConfig(), torch.Generator().manual_seed(seed))
    rgb, _ = render_scenes(parse(prompt), cams)
    return rgb.permute(0, 3, 1, 2).clamp(0, 1)


def run_frozen_probe(prior, prompt: str, config: VDMConfig, steps: int, seed: int = 0,
                     image: Tensor | None = None, batch: int = 1, on_row=None) -> list[dict[str, float]]:
    """VDM with `config` on a frozen image (default: `frozen_truth_image(prior, prompt, seed)`) for `steps` steps
    of `batch` draws each (the same image `batch` times: `text2img(..., frozen=True)`'s loop, whose draws it
    reproduces for batch 1). One row per draw: step, t, err_op = mean (Mψ(ε_φ) − ε)², err_id = mean (ε_φ − ε)²,
    and the step's cos_sds / loss_op / op_ratio (`on_row(rows)` is called after each step, for progress)."""
    from dreammapping.guidance.vdm import VDM

    image = frozen_truth_image(prior, prompt, seed) if image is None else image
    torch.manual_seed(seed)
    method = VDM(prior, config)
    emb = prior.encode_text(prompt, view_dependent=False).for_views(batch)
    with torch.no_grad():
        z = prior.encode_images(image.to(prior.device).expand(batch, -1, -1, -1).contiguous())
    z.requires_grad_(True)  # as in text2img, though nothing steps it: the same graph, the same numbers
    opt = method.optimizer_config().build(method.parameters())
    rows: list[dict[str, float]] = []
    for step in range(steps):
        out = method.distill(z, emb, step, steps)
        opt.zero_grad(set_to_none=True)
        (out.loss + out.aux_loss).backward()
        opt.step()
        d = method.last_draw
        err_op = (d.mapped - d.noise).float().pow(2).flatten(1).mean(1)
        err_id = (d.eps_cond - d.noise).float().pow(2).flatten(1).mean(1)
        for i in range(batch):
            rows.append({"step": step, "t": int(d.t[i]), "err_op": float(err_op[i]), "err_id": float(err_id[i]),
                         **{k: float(out.logs[k]) for k in ("cos_sds", "loss_op", "op_ratio")}})
        if on_row is not None:
            on_row(rows)
    return rows


@dataclass
class DrawSet:
    """N draws on one frozen image, as VDM makes them: t [N] ~ U{lo..hi}, ε [N,C,h,w] and ε_φ(x_t, t, y) [N,C,h,w]."""

    t: Tensor
    noise: Tensor
    eps_cond: Tensor


@torch.no_grad()
def make_draws(prior, prompt: str, image: Tensor, n: int, seed: int = 0, config: VDMConfig | None = None,
               chunk: int = 50) -> DrawSet:
    """`n` iid draws of (t, ε, ε_φ) on the frozen `image` [1,3,R,R] — t over `config`'s range (VDM's default:
    U{20..980}) — with the UNet run `chunk` draws at a time (only the conditional pass: L_op needs no other).

    On a frozen image the draws do not depend on ψ, so training Mψ on these in order (`replay`) is the online
    probe's stream of fresh draws, at a fraction of the cost; the same set serves every operator variant."""
    from dreammapping.guidance.vdm import VDM

    method = VDM(prior, config if config is not None else VDMConfig())
    lo, hi = method.timestep_range(0, 1)
    gen = torch.Generator().manual_seed(seed)
    z = prior.encode_images(image.to(prior.device))
    cond = prior.encode_text(prompt, view_dependent=False).for_views(1).cond
    ts, noises, eps = [], [], []
    for i in range(0, n, chunk):  # drawn chunk by chunk: a longer set starts with a shorter one (same seed, chunk, n a multiple of it)
        k = min(chunk, n - i)
        ts.append(torch.randint(lo, hi + 1, (k,), generator=gen))
        noises.append(torch.randn((k, *z.shape[1:]), generator=gen))
        tt, nn_ = ts[-1].to(prior.device), noises[-1].to(prior.device)
        x_t = prior.add_noise(z.expand(k, -1, -1, -1), nn_, tt)
        eps.append(prior.eps(x_t, tt, cond.expand(k, -1, -1)).float().cpu())
    t, noise = torch.cat(ts), torch.cat(noises)
    return DrawSet(t=t, noise=noise, eps_cond=torch.cat(eps))


def replay(operator: torch.nn.Module, optimizer: torch.optim.Optimizer, draws: DrawSet, batch: int = 1,
           on_row=None) -> list[dict[str, float]]:
    """Train `operator` on `draws` in order, `batch` draws per step, with VDM's L_op = mean (Mψ(ε_φ, t) − ε)²; each
    draw's errors are measured before the step that trains on it (held out). One row per draw, as
    `run_frozen_probe`'s (step, t, err_op, err_id)."""
    rows: list[dict[str, float]] = []
    device = next(operator.parameters()).device
    for step, i in enumerate(range(0, len(draws.t), batch)):
        t = draws.t[i:i + batch].to(device)
        noise, eps = draws.noise[i:i + batch].to(device), draws.eps_cond[i:i + batch].to(device)
        mapped = operator(eps, t)
        loss = (mapped - noise).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            err_op = (mapped.detach() - noise).pow(2).flatten(1).mean(1)
            err_id = (eps - noise).pow(2).flatten(1).mean(1)
        rows += [{"step": step, "t": int(t[k]), "err_op": float(err_op[k]), "err_id": float(err_id[k])}
                 for k in range(len(t))]
        if on_row is not None:
            on_row(rows)
    return rows


def _errors(row: dict[str, float]) -> tuple[float, float]:
    """(err_op, err_id) of a row; rows that hold a batch of one as loss_op / op_ratio give them as those."""
    if "err_id" in row:
        return row["err_op"], row["err_id"]
    return row["loss_op"], row["loss_op"] / row["op_ratio"] if row["op_ratio"] > 0 else float("nan")


def summarise(rows: list[dict[str, float]], first: int = 0) -> ProbeSummary:
    """Pool the rows with step ≥ `first`: op_ratio as Σ err_op / Σ err_id, overall and per t band."""
    late = [r for r in rows if r["step"] >= first]

    def pooled(sel):
        pairs = [_errors(r) for r in sel]
        pairs = [(a, b) for a, b in pairs if math.isfinite(b)]
        den = sum(b for _, b in pairs)
        return sum(a for a, _ in pairs) / den if pairs and den > 0 else float("nan")

    bands = {band: pooled([r for r in late if lo <= r["t"] < hi]) for band, (lo, hi) in T_BANDS.items()}
    cos = [r["cos_sds"] for r in late if math.isfinite(r.get("cos_sds", float("nan")))]
    return ProbeSummary(steps=len({r["step"] for r in late}), op_ratio=pooled(late), op_ratio_lo=bands["lo"],
                        op_ratio_mid=bands["mid"], op_ratio_hi=bands["hi"],
                        cos_sds=sum(cos) / len(cos) if cos else float("nan"))


def curve(rows: list[dict[str, float]], window: int = 100) -> list[dict[str, float]]:
    """op_ratio (pooled) and mean cos(VDM, SDS) per consecutive window of `window` steps: the curve along the run."""
    out = []
    steps = sorted({r["step"] for r in rows})
    for start in range(0, len(steps), window):
        chosen = set(steps[start:start + window])
        s = summarise([r for r in rows if r["step"] in chosen])
        out.append({"step": steps[start], "op_ratio": s.op_ratio, "op_ratio_lo": s.op_ratio_lo,
                    "op_ratio_mid": s.op_ratio_mid, "op_ratio_hi": s.op_ratio_hi, "cos_sds": s.cos_sds})
    return out


def loss_csv_rows(path: str | Path) -> list[dict[str, float]]:
    """A run's loss.csv as rows `summarise` / `curve` read (step, t, loss_op, op_ratio, cos_sds). A row holds one
    step's batch: its op_ratio is already a ratio of the batch's sums and t is the batch's mean (bands: approximate)."""
    import csv

    with open(path, newline="") as f:
        return [{"step": int(r["step"]), **{k: float(r[k]) for k in ("t", "loss_op", "op_ratio", "cos_sds")}}
                for r in csv.DictReader(f) if r.get("op_ratio") not in (None, "", "nan")]


def provenance(prior) -> dict:
    """What pins a record to its run: commit (and whether the tree had changes), torch / diffusers versions, CPU
    bf16 flag, threads, the prior's device and dtype and the sha256 of its UNet weights. (To move next to the
    claims records' pinning once both exist on one branch.)"""
    import diffusers

    from dreammapping.devices import native_cpu_bf16
    from dreammapping.priors import embedded_prior_path

    root = Path(__file__).resolve().parents[3]

    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    weights = sorted((embedded_prior_path() / "unet").glob("*.safetensors"))
    sha = hashlib.sha256(weights[0].read_bytes()).hexdigest() if weights else None
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
            "torch": torch.__version__, "diffusers": diffusers.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads(), "cpu_bf16": native_cpu_bf16(), "device": str(prior.device),
            "dtype": str(prior.dtype).replace("torch.", ""), "prior_unet_sha256": sha}
