"""The suite's fuzzer (tests/test_fuzz.py) at a larger budget and with fresh random examples each run.

    python benchmarks/fuzz.py                 # 500 examples per property
    python benchmarks/fuzz.py --examples 5000 # longer

The suite runs 25 derandomized examples per property (a fixed, fast set); this draws new ones every time, so a
failure here is a new case: hypothesis prints the smallest input that fails, to be added to the suite's tests.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=500, help="examples per property (default 500)")
    parser.add_argument("-k", default=None, help="only the properties whose name matches (pytest -k)")
    args = parser.parse_args()
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "DREAMMAPPING_FUZZ_EXAMPLES": str(args.examples), "DREAMMAPPING_FUZZ_RANDOM": "1"}
    command = [sys.executable, "-m", "pytest", str(root / "tests" / "test_fuzz.py"), "-q", "-p", "no:cacheprovider",
               "--durations=0"] + (["-k", args.k] if args.k else [])
    return subprocess.call(command, cwd=root, env=env)


if __name__ == "__main__":
    sys.exit(main())
