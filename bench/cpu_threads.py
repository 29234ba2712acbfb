"""Training on a CPU that other processes also use: torch's default threads vs sized threads.

Two (or `--busy`) processes spin on the CPU for the whole measurement; the demo is trained with
`[training] cpu_threads` = the usable cores (what torch does by default: one thread per core)
and then with the count left to the engine (engine/cpu_threads.py: the free cores, at least one).
Each run's speed is steps per second between its `ready` and `finished` events; the figure is the
ratio sized / default (above 1: sizing helps). Measure it alone on the machine, nothing else
running besides the spinners:

    python bench/cpu_threads.py [--steps 80] [--busy 2] [--out results.json]

`--steps 2` is a smoke run (seconds; its figures mean nothing).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.cpu_threads import allowed_cores  # noqa: E402


def spin(stop_at: float) -> None:
    while time.monotonic() < stop_at:
        pass


def demo_answers(folder: Path, steps: int, threads: int | None) -> Path:
    """The demo's answers file, for `steps` steps, with or without a thread count."""
    from engine.config import load_answers, save_answers
    from engine.demo import create_demo

    answers = load_answers(create_demo(folder / "demo"))
    training = answers.training.model_copy(update={"max_steps": steps, "log_every_steps": 1, "cpu_threads": threads})
    output = answers.output.model_copy(update={"name": f"threads_{threads or 'sized'}", "overwrite": True})
    path = folder / "demo" / f"answers-{threads or 'sized'}.toml"
    save_answers(answers.model_copy(update={"training": training, "output": output}), path)
    return path


def steps_per_second(answers: Path) -> dict:
    """Train headless (JSON events) and time the steps from `ready` to `finished`."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # the engine decides
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run([sys.executable, "-m", "tui_lora.cli", "train", str(answers)], capture_output=True, text=True, env=env,
                          cwd=answers.parent, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"training failed:\n{done.stderr[-3000:]}")
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    ready = next(e for e in events if e["kind"] == "ready")
    finished = next(e for e in events if e["kind"] == "finished")
    seconds = max(finished["time"] - ready["time"], 1e-6)
    return {"threads": ready.get("cpu_threads"), "steps": finished["steps"], "seconds": round(seconds, 3),
            "steps_per_second": finished["steps"] / seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--busy", type=int, default=2, help="spinning processes beside the training")
    parser.add_argument("--out", type=Path, help="also write the figures here (JSON)")
    args = parser.parse_args(argv)
    cores = allowed_cores()
    with tempfile.TemporaryDirectory(prefix="bench-cpu-threads-") as work:
        folder = Path(work)
        default_answers = demo_answers(folder, args.steps, cores)  # torch's default: a thread per core
        sized_answers = demo_answers(folder, args.steps, None)
        context = multiprocessing.get_context("spawn")
        spinners = [context.Process(target=spin, args=(time.monotonic() + 7200,)) for _ in range(args.busy)]
        for spinner in spinners:
            spinner.start()
        try:
            time.sleep(1.0)
            default = steps_per_second(default_answers)
            sized = steps_per_second(sized_answers)
        finally:
            for spinner in spinners:
                spinner.terminate()
                spinner.join()
    result = {"usable_cores": cores, "busy_processes": args.busy, "default": default, "sized": sized,
              "sized_over_default": sized["steps_per_second"] / default["steps_per_second"]}
    print(f"usable cores {cores}, {args.busy} busy processes, {args.steps} steps")
    print(f"  default ({default['threads']} threads): {default['steps_per_second']:.2f} steps/s")
    print(f"  sized   ({sized['threads']} threads): {sized['steps_per_second']:.2f} steps/s")
    print(f"  sized / default: {result['sized_over_default']:.2f}x")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
