"""What following a run costs: the dashboard's own CPU use, and the engine's speed with it.

    python bench/dashboard.py [--seconds 20] [--out bench/results]

A real engine trains the demo's tiny model (one step event a step, samples every 50 steps) as a
detached process. The bench measures the engine's steps/s headless, with the dashboard attached
(bench/dashboard_probe.py, headless Textual at 120x40), and headless again (A, B, A: a load that
drifts cancels out), then the dashboard's CPU time over the same window as a share of one core.
On a CPU the engine and the dashboard share the cores, so the steps/s ratio there is an upper
bound of the cost; the figure that matters is the GPU's (run it on a GPU machine).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MAX_STEPS = 1_000_000  # stopped by the bench, never reached


def busy_run(folder: Path) -> Path:
    """The demo trained for ever, one event a step: the busiest stream a dashboard follows."""
    from engine.config import save_answers
    from engine.demo import create_demo, demo_answers

    answers_path = create_demo(folder)
    # The answers create_demo wrote (relative paths), changed field by field; assignment is validated.
    answers = demo_answers(folder)
    answers.training.log_every_steps = 1
    answers.training.max_steps = MAX_STEPS
    answers.checkpoints.every_epoch = False
    answers.samples.prompts = ["usu bear"]
    answers.samples.every_steps = 50
    answers.samples.steps = 4
    # Overwriting is safe: it is the file create_demo just wrote in this bench's own folder.
    save_answers(answers, answers_path, overwrite=True)
    subprocess.run([sys.executable, "-m", "tui_lora.cli", "train", str(answers_path), "--detach"], check=True, cwd=folder,
                   stdout=subprocess.DEVNULL)
    return folder / "output" / "usu_bear.run"


def steps_per_second(run: Path, seconds: float) -> float:
    from engine.events import read_events

    def last_step() -> tuple[float, int]:
        steps = [e for e in read_events(run / "events.jsonl") if e["kind"] == "step"]
        return (steps[-1]["time"], steps[-1]["step"]) if steps else (time.time(), 0)

    start_time, start_step = last_step()
    time.sleep(seconds)
    end_time, end_step = last_step()
    return (end_step - start_step) / max(1e-9, end_time - start_time)


def wait_for_steps(run: Path, count: int, timeout: float = 600) -> None:
    from engine.events import read_events

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(1 for e in read_events(run / "events.jsonl") if e["kind"] == "step") >= count:
            return
        time.sleep(0.5)
    raise SystemExit(f"the engine wrote no {count} steps in {timeout} s; see {run / 'engine.log'}")


def measure(run: Path, seconds: float) -> dict:
    probe = [sys.executable, str(Path(__file__).with_name("dashboard_probe.py")), str(run), str(seconds)]
    headless_before = steps_per_second(run, seconds)
    dashboard = subprocess.Popen(probe, stdout=subprocess.PIPE, text=True)
    dashboard.stdout.readline()  # "following": started and settled, left out of both figures
    attached = steps_per_second(run, seconds - 0.5)
    output, _ = dashboard.communicate(timeout=seconds + 120)
    usage = json.loads(output.strip().splitlines()[-1])
    headless_after = steps_per_second(run, seconds)
    headless = (headless_before + headless_after) / 2
    return {
        "dashboard_cpu_percent_of_one_core": 100 * usage["cpu_seconds"] / usage["wall_seconds"],
        "dashboard_events_seen": usage["events_seen"],
        "steps_per_second_headless": headless,
        "steps_per_second_attached": attached,
        "attached_over_headless": attached / headless if headless else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="each measuring window")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results"))
    args = parser.parse_args()

    from bench.report import machine_facts
    from engine.run_folder import engine_running, request

    with tempfile.TemporaryDirectory() as folder:
        run = busy_run(Path(folder) / "demo")
        try:
            wait_for_steps(run, 20)
            result = {"machine": machine_facts(), **measure(run, args.seconds)}
        finally:
            request(run, "stop")
            deadline = time.monotonic() + 120
            while engine_running(run) and time.monotonic() < deadline:
                time.sleep(0.5)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "dashboard.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"dashboard CPU use: {result['dashboard_cpu_percent_of_one_core']:.1f}% of one core "
          f"(followed {result['dashboard_events_seen']} events)")
    print(f"engine steps/s: headless {result['steps_per_second_headless']:.2f}, "
          f"dashboard attached {result['steps_per_second_attached']:.2f} "
          f"(ratio {result['attached_over_headless']:.3f}) on {result['machine']['gpu'] or result['machine']['cpu']}")


if __name__ == "__main__":
    main()
