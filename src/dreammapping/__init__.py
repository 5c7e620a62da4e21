"""dreammapping: text → 3D Gaussian Splatting with Variational Distribution Mapping (DreamMapping, CGF 2024)."""

import os
import sys

__version__ = "0.1.0"

# OpenMP threads that wait passively (sleep) instead of spinning at every barrier: with spinning, two torch threads
# on a machine where another process holds a core ran ~8× slower than one (docs/performance.md). libgomp reads this
# once, when torch loads it, so it only takes effect if torch is not imported yet; `devices.resolve_threads` then uses
# the cores other processes leave free, and one thread when it could not be set (torch came first, or the user chose
# ACTIVE).
if "torch" not in sys.modules:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
OPENMP_PASSIVE = os.environ.get("OMP_WAIT_POLICY", "").strip().upper() == "PASSIVE"


def generate(prompt: str, **options):
    """Run text-to-3D generation; see `dreammapping.train.generate` for the options and the result object."""
    from dreammapping.train import generate as _generate

    return _generate(prompt, **options)


__all__ = ["__version__", "generate"]
