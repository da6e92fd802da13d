"""How long `grader check` takes on one notebook, against `python -c "import torch"` measured in the same run.

    python benchmarks/check_speed.py [--runs 5] [--sandbox auto|linux|portable] [NOTEBOOK]

Prints the median wall time of each and their ratio. The grader cannot be faster than one torch
import (its child process needs one); the ratio says how far from that floor it is. With
`--sandbox portable` (as on macOS and Windows) the target is at most 3.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def median_seconds(command: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook", nargs="?", default=str(ROOT / "solutions" / "backprop_ninja.ipynb"))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--sandbox", choices=["auto", "linux", "portable"], default="auto")
    args = parser.parse_args()
    grader = [shutil.which("grader") or str(Path(sys.executable).parent / "grader"), "check", "--sandbox", args.sandbox]

    with tempfile.NamedTemporaryFile("w", suffix=".toml") as none:  # a hidden-runs file with no runs
        median_seconds([*grader, args.notebook], 1)  # warm the file cache
        baseline = median_seconds([sys.executable, "-c", "import torch"], args.runs)
        single = median_seconds([*grader, args.notebook, "--hidden-runs", none.name], args.runs)
        check = median_seconds([*grader, args.notebook], args.runs)
    print(f"sandbox: {args.sandbox}")
    print(f"python -c 'import torch'                     median of {args.runs}: {baseline:6.2f} s")
    print(f"grader check, no hidden re-runs              median of {args.runs}: {single:6.2f} s")
    print(f"grader check, with the rubric's hidden runs  median of {args.runs}: {check:6.2f} s")
    print(f"ratio no hidden runs / import torch:   {single / baseline:.2f}")
    print(f"ratio with hidden runs / import torch: {check / baseline:.2f}   (portable target: at most 3)")
    print(f"ratio with hidden runs / without:      {check / single:.2f}")


if __name__ == "__main__":
    main()
