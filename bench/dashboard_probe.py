"""Attach the dashboard to a run, headless, for a while, and print its own CPU use as JSON.

    python bench/dashboard_probe.py RUN_DIR SECONDS

bench/dashboard.py runs this beside a busy engine. The first two seconds (start-up, reading the
run's history) are left out of the figure: what is measured is the cost of following.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SETTLE_SECONDS = 2.0


async def follow(run: Path, seconds: float) -> dict[str, float]:
    from tui_lora.app import WizardApp

    app = WizardApp(attach=run)
    async with app.run_test(headless=True, size=(120, 40)):
        await asyncio.sleep(SETTLE_SECONDS)
        print("following", flush=True)
        cpu, wall = time.process_time(), time.monotonic()
        await asyncio.sleep(seconds)
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
        events = app.screen.view.events_seen if app.screen.name == "dashboard" else -1
    return {"cpu_seconds": cpu, "wall_seconds": wall, "events_seen": events}


def main() -> None:
    run, seconds = Path(sys.argv[1]), float(sys.argv[2])
    with tempfile.TemporaryDirectory() as data_folder:
        os.environ["LORA_WIZARD_DATA_DIR"] = data_folder  # the user's settings are not touched
        print(json.dumps(asyncio.run(follow(run, seconds))), flush=True)


if __name__ == "__main__":
    main()
