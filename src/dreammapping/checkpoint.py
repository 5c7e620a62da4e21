"""A run's checkpoint: what is saved (θ, both optimisers, Mψ / LoRA, the strategy's statistics, every RNG), how it is
written (atomically) and read back (tensors only), and the Ctrl-C flag that makes the loop stop at a step boundary."""

from __future__ import annotations

import io
import signal
import threading
from pathlib import Path

import torch

from dreammapping.errors import RunExistsError
from dreammapping.files import atomic_path

CHECKPOINT = "checkpoint.pt"  # its name in the run folder
# What every checkpoint holds; the scene's own entries (Gaussians: "gaussians", "optimizer", "strategy") come from its
# representation (`SceneConfig.state_keys`) and are checked with them.
CHECKPOINT_KEYS = ("step", "method_params", "rng", "train_seconds", "window", "init_used", "init_reason")


def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save to a temporary file, then an atomic rename: a crash never leaves a half-written checkpoint."""
    # Serialised in memory first: torch's own file writer turns a full disk into an unexplained RuntimeError
    # ("unexpected pos …"), Python's write raises the OSError (ENOSPC) that says what happened.
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())


def load_checkpoint(path: Path, required: tuple[str, ...] = ()) -> dict:
    """The checkpoint's state (tensors only, never pickled code); RunExistsError when it is damaged or lacks one of
    CHECKPOINT_KEYS or `required` (the scene's own entries)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, random bytes, a foreign pickle: torch's message suggests unsafe loading
        raise RunExistsError(f"cannot resume: {path} is damaged or not a checkpoint of this program "
                             f"({type(e).__name__}); nothing was changed — start again with --overwrite") from None
    missing = [k for k in (*CHECKPOINT_KEYS, *required) if k not in state] if isinstance(state, dict) else ["all"]
    if missing:
        raise RunExistsError(f"cannot resume: {path} is not a checkpoint of this program (missing "
                             f"{', '.join(missing)}); nothing was changed — start again with --overwrite")
    return state


def rng_state(generator: torch.Generator) -> dict:
    """The global torch RNG (guidance's t and ε), the camera generator and CUDA's, for a bitwise resume."""
    state = {"torch": torch.get_rng_state(), "cameras": generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["cameras"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class SigintFlag:
    """Turns the first Ctrl-C into a flag the loop checks between steps (so the checkpoint is consistent);
    a second Ctrl-C interrupts at once."""

    def __init__(self):
        self.set = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.set:
            raise KeyboardInterrupt
        self.set = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False
