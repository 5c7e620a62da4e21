"""What `--resume` may change, checked before anything of the run is touched.

A resumed run continues the checkpoint's Gaussians, optimisers and RNG streams. Options that only shaped the start
(the initialisation, the SH degree of the Gaussians, the seed) would be ignored, and a new prompt or another folder
would relabel the run: config.yaml and metrics.json would describe a run that never happened. `check_resume` refuses
them with one line (ConfigError, exit 2) and checks that loss.csv can be continued (RunExistsError, exit 7, for a
damaged one), all before train() writes anything, so a failed `--resume` leaves the folder as it was.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from dreammapping.config import GenerateConfig, config_to_dict, load_yaml_config
from dreammapping.errors import ConfigError, GenerateError, RunExistsError
from dreammapping.resources import read_capped
from dreammapping.rundir import LossLog
from dreammapping.validation import short

# Fields a resume cannot honour: the checkpoint already holds what they decided.
FIXED_ON_RESUME = {
    "prompt": "the run's prompt (start a new run for another prompt)",
    "scene": "the checkpoint holds that representation",
    "seed": "the checkpoint holds the RNG state the seed started",
    "sh_degree": "the checkpoint's Gaussians have their SH degree",
    "init": "a resumed run is not initialised again",
    "num_points": "a resumed run is not initialised again",
    "init_options": "a resumed run is not initialised again",
}
MAX_LOSS_LOG_BYTES = 64 << 20


def check_resume(cfg: GenerateConfig, run_dir: Path) -> None:
    """ConfigError when `cfg` changes a field fixed on resume or points --out elsewhere; RunExistsError when loss.csv
    is damaged. A folder without config.yaml is left to train() (it says there is nothing to resume)."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return
    try:
        saved = load_yaml_config(path, GenerateConfig())
    except GenerateError as e:
        raise RunExistsError(f"cannot resume: {e}; nothing was changed") from None
    old, new = _flat(config_to_dict(saved)), _flat(config_to_dict(cfg))
    for name, why in FIXED_ON_RESUME.items():
        # a field is found at the top level or inside the scene's options ({"scene": {"gaussians": {…}}})
        before, after = old.get(name), new.get(name)
        if before != after:
            raise ConfigError(f"--resume cannot change {name} ({short(before)} → {short(after)}): {why}; nothing "
                              "was changed")
    if cfg.out is not None and cfg.out != saved.out and Path(cfg.out).resolve() != run_dir.resolve():
        raise ConfigError(f"--resume continues the run in {run_dir}; --out {short(cfg.out)} names another folder "
                          "(copy the run folder there and resume that copy instead); nothing was changed")
    check_loss_log(run_dir / "loss.csv")


def _flat(data: dict) -> dict:
    """A config dict with the chosen scene's options beside the top-level fields (and the scene's name as
    "scene"), so that FIXED_ON_RESUME names fields wherever the config keeps them."""
    flat = dict(data)
    scene = data.get("scene")
    if isinstance(scene, dict) and len(scene) == 1:
        (name, options), = scene.items()
        flat["scene"] = name
        if isinstance(options, dict):
            flat.update({k: v for k, v in options.items() if k not in data})
    return flat


def check_loss_log(path: Path) -> None:
    """RunExistsError (one line) unless `path` is absent or a loss.csv this program can continue: its header starts
    with LossLog's columns and every row has an integer step and a number for the loss."""
    if not path.exists():
        return
    def damaged(why: str) -> RunExistsError:
        return RunExistsError(f"cannot resume: {path} is damaged ({why}); nothing was changed — delete it to start "
                              "a new log, or start again with --overwrite")
    try:
        text = read_capped(path, MAX_LOSS_LOG_BYTES, "loss log").decode("utf-8")
    except (OSError, UnicodeDecodeError, ConfigError) as e:
        raise damaged(f"unreadable: {type(e).__name__}") from None
    if text and not text.endswith("\n"):  # a row torn by a kill mid-write: LossLog drops it, as the checkpoint did
        text = text[:text.rfind("\n") + 1]
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None:
        return  # empty: LossLog starts a fresh one
    if header[:len(LossLog.COLUMNS)] != LossLog.COLUMNS:
        raise damaged(f"its header is {short(','.join(header))}, expected {','.join(LossLog.COLUMNS)},…")
    for number, row in enumerate(reader, 2):
        if not row:
            continue
        try:
            step, loss = int(row[0]), float(row[1])
        except (ValueError, IndexError):
            raise damaged(f"line {number}: step or loss is not a number ({short(','.join(row[:2]))})") from None
        if len(row) != len(header):
            raise damaged(f"line {number} has {len(row)} fields, the header {len(header)}")
        if step < 0 or math.isinf(loss):
            raise damaged(f"line {number}: step {step}, loss {loss}")
