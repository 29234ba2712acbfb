"""Checkpoints that resume exactly, written so that a crash never leaves a broken newest one.

    <run>/checkpoints/step-000120/
      lora.safetensors   the trainable LoRA weights, by parameter name
      state.pt           optimizer, LR scheduler, gradient scaler
      rng-rank0.pt       every RNG state of process 0 (one file per process)
      meta.json          step, epoch, position in the epoch, the dataset's fingerprint

A checkpoint is written into `step-000120.tmp/`, every file fsynced, then the folder is renamed:
the rename is the commit. Folders still named `.tmp` are leftovers of a crash and are ignored.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from engine.dataset import DatasetPlan, dataset_name
from engine.errors import UserError
from engine.files import atomic_write_bytes, fsync_dir

CHECKPOINTS = "checkpoints"


@dataclass(frozen=True)
class Position:
    """Where training stands: `step` optimizer steps done; the next is group `group` of `epoch` (0-based)."""

    step: int
    epoch: int
    group: int


def dataset_fingerprint(plan: DatasetPlan) -> dict[str, Any]:
    """What a resume must find unchanged: every file's size and time, caption, repeats."""
    files = {}
    for concept in (*plan.concepts, *plan.reg_concepts):
        for example in concept.examples:
            stat = example.path.stat()
            key = dataset_name(concept, example)
            files[key] = [stat.st_size, stat.st_mtime_ns, example.caption, concept.repeats]
    return {"files": files, "reg_counts": list(plan.reg_counts)}


def describe_dataset_change(saved: dict[str, Any], current: dict[str, Any]) -> str | None:
    """A sentence naming what changed in the dataset since the checkpoint, or None."""
    before, after = saved["files"], current["files"]
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    parts = []
    for label, names in (("added", added), ("removed", removed), ("changed", changed)):
        if names:
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            parts.append(f"{label}: {shown}")
    return "; ".join(parts) or None


def rng_states() -> dict[str, Any]:
    import numpy as np
    import torch

    name, keys, pos, has_gauss, cached = np.random.get_state()
    # Plain lists and tensors only, so the state loads with torch.load(weights_only=True).
    numpy_state = [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached]
    states = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    import numpy as np
    import torch

    random.setstate(states["python"])
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Committed checkpoints, newest first."""
    folder = run_dir / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith("step-") and not p.name.endswith(".tmp")]
    return sorted(found, key=lambda p: p.name, reverse=True)


def _fsync_file(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def staging_dir(run_dir: Path, position: Position) -> Path:
    return run_dir / CHECKPOINTS / f"step-{position.step:09d}.tmp"


def stage_checkpoint(
    run_dir: Path, position: Position, *, lora: dict[str, Any], training_state: dict[str, Any], fingerprint: dict[str, Any]
) -> Path:
    """Write the shared part of a checkpoint (main process) into its staging folder."""
    import torch
    from safetensors.torch import save_file

    staging = staging_dir(run_dir, position)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in lora.items()}, staging / "lora.safetensors")
    torch.save(training_state, staging / "state.pt")
    meta = {"position": asdict(position), "fingerprint": fingerprint}
    atomic_write_bytes(staging / "meta.json", json.dumps(meta).encode("utf-8"))
    for name in ("lora.safetensors", "state.pt"):
        _fsync_file(staging / name)
    return staging


def write_rank_rng(staging: Path, rank: int) -> None:
    """Every process keeps its own RNG state: one file per rank."""
    import torch

    path = staging / f"rng-rank{rank}.pt"
    torch.save(rng_states(), path)
    _fsync_file(path)


def commit_checkpoint(staging: Path, *, keep_last: int, before_commit=None) -> Path:
    """The rename that makes a staged checkpoint the newest; older ones beyond `keep_last` go."""
    fsync_dir(staging)
    if before_commit is not None:  # a test hook: pause here to kill the writer mid-checkpoint
        before_commit(staging)
    final = staging.with_name(staging.name.removesuffix(".tmp"))
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
    fsync_dir(final.parent)
    for old in checkpoint_dirs(final.parent.parent)[keep_last:]:
        shutil.rmtree(old, ignore_errors=True)
    return final


@dataclass
class LoadedCheckpoint:
    path: Path
    position: Position
    lora: dict[str, Any]
    training_state: dict[str, Any]
    fingerprint: dict[str, Any]
    ranks: int  # how many processes trained it (one RNG file each)

    def rng_of(self, rank: int) -> dict[str, Any]:
        import torch

        return torch.load(self.path / f"rng-rank{rank}.pt", map_location="cpu", weights_only=True)


def read_checkpoint(path: Path) -> LoadedCheckpoint:
    """Load one checkpoint; raises ValueError (with the reason) when it is damaged."""
    import torch
    from safetensors.torch import load_file

    try:
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
        lora = load_file(path / "lora.safetensors")
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
        ranks = len(list(path.glob("rng-rank*.pt")))
        for rank in range(ranks):
            torch.load(path / f"rng-rank{rank}.pt", map_location="cpu", weights_only=True)
        if ranks == 0:
            raise FileNotFoundError("no rng-rank0.pt")
    except Exception as exc:  # any unreadable part makes the whole checkpoint unusable
        raise ValueError(f"{type(exc).__name__}: {exc}") from None
    return LoadedCheckpoint(path, Position(**meta["position"]), lora, state, meta["fingerprint"], ranks)


def newest_fingerprint(run_dir: Path) -> dict[str, Any] | None:
    """The dataset fingerprint of the newest checkpoint, read without loading any tensor."""
    for path in checkpoint_dirs(run_dir):
        try:
            return json.loads((path / "meta.json").read_text(encoding="utf-8"))["fingerprint"]
        except (OSError, ValueError, KeyError):
            continue
    return None


def newest_valid_checkpoint(run_dir: Path, on_skip=None) -> LoadedCheckpoint | None:
    """The newest checkpoint that loads; damaged ones are reported through `on_skip` and passed over."""
    for path in checkpoint_dirs(run_dir):
        try:
            return read_checkpoint(path)
        except ValueError as exc:
            if on_skip is not None:
                on_skip(path, str(exc))
    return None


def check_same_dataset(saved: dict[str, Any], current: dict[str, Any], run_dir: Path) -> None:
    """Refuse to resume when the dataset differs from the one the checkpoint was trained on."""
    change = describe_dataset_change(saved, current)
    if change:
        raise UserError(
            f"the dataset changed since this run's checkpoint ({change})",
            where=run_dir,
            fix="put the dataset back as it was to resume exactly, or start a new run",
        )
