"""bench/tagging.py still runs (tiny sizes; no timing asserted: other jobs share the machine)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_tagging_bench_measures_both_models():
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "tagging.py"), "--images", "4", "--image-size", "96", "--batch-size", "3",
         "--blocks", "1", "--width", "32", "--tags", "50", "--threads", "1", "--json"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout)
    for name in ("tiny", "vit_like"):
        assert results[name]["input"] == 448 and results[name]["images"] == 4
        assert results[name]["images_per_s"] > 0 and results[name]["model_only_images_per_s"] > 0
    assert results["vit_like"]["gmac_per_image"] > 0
