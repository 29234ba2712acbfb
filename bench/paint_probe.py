"""Start the wizard as `lora-wizard` does, headless, and print `painted` once its first screen is
mounted; bench/startup.py times this process from its start to that line.

The app keeps its draft and settings in a fresh temporary folder, so the user's are not touched
and every run starts as a first run.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


async def paint_once() -> None:
    from tui_lora.app import WizardApp

    app = WizardApp()
    async with app.run_test(headless=True, size=(120, 40)):  # returns once the first screen is mounted
        print("painted", type(app.screen).__name__, flush=True)


def main() -> None:
    with tempfile.TemporaryDirectory() as data_folder:
        os.environ["LORA_WIZARD_DATA_DIR"] = data_folder  # tui_lora.draft.DATA_DIR_VARIABLE
        asyncio.run(paint_once())


if __name__ == "__main__":
    main()
