"""A run's folder: making it (never clobbering an old run), --overwrite without losing the old run until the new
one has a checkpoint, finding a run to resume, and its loss.csv."""

from __future__ import annotations

import contextlib
import csv
import os
import shlex
import shutil
from pathlib import Path

from dreammapping.checkpoint import CHECKPOINT
from dreammapping.errors import ConfigError, OutputError, RunExistsError
from dreammapping.files import atomic_path, check_writable_folder, describe_write_error, remove_stale_temporaries

# What a run writes: any of them in a folder means the folder holds a run (not only checkpoint.pt).
RUN_FILES = ("config.yaml", "loss.csv", "checkpoint.pt", "gaussians.ply", "turntable.mp4", "turntable.gif",
             "views.png", "metrics.json", "eval.json")
PREVIOUS_RUN = ".previous-run"  # where --overwrite keeps the old run until the new one has a checkpoint
RUN_MARKERS = ("config.yaml", CHECKPOINT)  # only generate writes these: a folder holding one is a run folder
KEEP_ON_OVERWRITE = ("batch.log",)  # batch's log of a folder's attempts: a log, not something the old run made


def prepare_run_dir(run_dir: Path, fresh: bool, overwrite: bool) -> list[str]:
    """Create the run folder and make sure it can be written; refuse to clobber a previous run. Deletes nothing but
    the temporaries of killed writers; returns the names of the old run's files a fresh --overwrite run will
    replace (see `set_previous_run_aside`)."""
    try:
        recover_previous_run(run_dir)
        existing = [name for name in RUN_FILES if (run_dir / name).exists()] if fresh else []
        if existing and not overwrite:
            raise RunExistsError(f"{run_dir} already holds a run ({', '.join(existing)}); continue it with --resume "
                                 f"{shlex.quote(str(run_dir))}, choose another --out, or pass --overwrite")
        check_writable_folder(run_dir)
        remove_stale_temporaries(run_dir)  # a SIGKILL during an atomic write leaves its temporary behind
        if existing:  # everything the old run made goes aside, its exports and renders too (they would be stale)
            existing = sorted(p.name for p in run_dir.iterdir()
                              if not p.name.startswith(".") and p.name not in KEEP_ON_OVERWRITE)
    except OSError as e:
        raise OutputError(f"cannot write to the output folder {run_dir}: {e.strerror or e}") from None
    return existing


def set_previous_run_aside(run_dir: Path, names: list[str]) -> None:
    """--overwrite without losing anything: the old run's files wait in RUN/.previous-run until the new run writes its
    first checkpoint (`discard_previous_run`); if the new run fails before that — divergence, a full disk, a crash,
    a second Ctrl-C — `recover_previous_run` puts them back (at once, or on the next start after a kill)."""
    if names:
        (run_dir / PREVIOUS_RUN).mkdir()
        for name in names:
            (run_dir / name).rename(run_dir / PREVIOUS_RUN / name)


def is_run_folder(folder: str | os.PathLike) -> bool:
    """Whether `folder` holds a run of `generate` (its config.yaml or checkpoint.pt)."""
    return any((Path(folder) / name).exists() for name in RUN_MARKERS)


def check_not_a_run_file(path: str | os.PathLike, flag: str = "--out") -> None:
    """ConfigError when writing `path` would replace a file of a run (checkpoint.pt, views.png, … in a folder that
    holds a run): `export` and `render` never do; they write beside the run's files or elsewhere."""
    path = Path(path)
    if (path.name in RUN_FILES or path.name.startswith(".")) and is_run_folder(path.parent):
        raise ConfigError(f"{flag} {path} would replace a file of the run in {path.parent}; choose another name "
                          "or folder (the run's own files are only written by generate)")


def discard_previous_run(run_dir: Path) -> None:
    shutil.rmtree(run_dir / PREVIOUS_RUN, ignore_errors=True)


def recover_previous_run(run_dir: Path) -> None:
    aside = run_dir / PREVIOUS_RUN
    if not aside.is_dir():
        return
    if (run_dir / CHECKPOINT).exists():  # the new run got as far as a checkpoint (then was killed): it replaced the old
        discard_previous_run(run_dir)
        return
    for name in RUN_FILES:  # the new run's config.yaml and loss.csv go; the old run's files come back
        (run_dir / name).unlink(missing_ok=True)
    for entry in aside.iterdir():
        entry.rename(run_dir / entry.name)
    aside.rmdir()


def resume_config_path(run_dir: str | os.PathLike) -> Path:
    """RUN/config.yaml of a run to resume; RunExistsError when there is none (or the name cannot be a folder)."""
    path = Path(run_dir) / "config.yaml"
    try:
        recover_previous_run(Path(run_dir))  # an --overwrite killed before its first checkpoint: the old run's config
        found = path.is_file()
    except OSError as e:  # e.g. a name longer than the file system allows
        raise RunExistsError(f"nothing to resume: {run_dir} ({e.strerror or e})") from None
    if not found:
        raise RunExistsError(f"nothing to resume: {run_dir} has no config.yaml")
    return path


def io_failure(error: OSError, run_dir: Path) -> str:
    """One line for a write that failed mid-run (a full disk, a folder made read-only), and what is kept."""
    kept = ""
    with contextlib.suppress(OSError):
        if (run_dir / CHECKPOINT).is_file():
            kept = (f"; the last checkpoint is kept, resume with: dreammapping generate --resume "
                    f"{shlex.quote(str(run_dir))}")
    return describe_write_error(error, error.filename or run_dir) + kept


class LossLog:
    """loss.csv: one row every `log_every` steps; on resume, rows after the checkpoint are dropped first."""

    COLUMNS = ["step", "loss", "aux_loss", "gaussians", "lr_means", "seconds"]

    def __init__(self, path: Path, keep_before: int):
        self.path, self.columns, self.last_loss = path, None, float("nan")
        rows = []
        if keep_before > 0 and path.exists():
            with path.open(newline="") as f:
                reader = csv.DictReader(f)
                self.columns = reader.fieldnames
                # a row torn by a kill mid-write has missing fields (None): dropped, as a row after the checkpoint
                rows = [r for r in reader if None not in r.values() and int(r["step"]) <= keep_before]
        self.writer = None
        if self.columns:  # the kept rows replace the file whole (a crash here must not lose the log), then append
            with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
                writer = csv.DictWriter(f, self.columns, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(rows)
            if rows:
                self.last_loss = float(rows[-1]["loss"])
            self.file = path.open("a", newline="")
            self.writer = csv.DictWriter(self.file, self.columns, extrasaction="ignore")
        else:
            self.file = path.open("w", newline="")

    def write(self, row: dict) -> None:
        if self.writer is None:
            self.columns = self.COLUMNS + sorted(k for k in row if k not in self.COLUMNS)
            self.writer = csv.DictWriter(self.file, self.columns, extrasaction="ignore")
            self.writer.writeheader()
        self.writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        self.file.flush()
        self.last_loss = float(row["loss"])

    def close(self) -> None:
        self.file.close()
