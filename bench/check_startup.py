"""Wall time of `lora-wizard check` (and `--json`), best of 5 runs, each a fresh process.

The aim is under 2 s on a machine without a GPU. The check reads torch's build from its files
(torch/version.py) and imports torch only where that cannot tell whether CUDA works (a CUDA or
ROCm build with a driver present), so on a CPU build it should sit well under `import torch`.

    python bench/check_startup.py [--runs 5] [ANSWERS_FILE]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time


def best_wall_time(command: list[str], runs: int) -> tuple[float, int]:
    """The fastest of `runs` runs, and the exit status of the last."""
    best, status = float("inf"), 0
    for _ in range(runs):
        started = time.perf_counter()
        status = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
        best = min(best, time.perf_counter() - started)
    return best, status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("answers_file", nargs="?")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    base = [sys.executable, "-m", "tui_lora.cli", "check", *([args.answers_file] if args.answers_file else [])]
    runs = (
        ("lora-wizard check", base),
        ("lora-wizard check --json", [*base, "--json"]),
        # For comparison: what the check cost when it imported torch to read its build.
        ("python -c 'import torch' (reference)", [sys.executable, "-c", "import torch"]),
    )
    for label, command in runs:
        seconds, status = best_wall_time(command, args.runs)
        print(f"{label}: {seconds:.2f} s (best of {args.runs}, exit {status})")


if __name__ == "__main__":
    main()
