"""Randomness derived from the seed and a name, never from a running generator.

The noise, timestep and latent sample of an image are drawn from `(seed, what, global index)`,
so a result does not depend on the batch layout, the number of processes, or a resume.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed from the run's seed and any names or indices."""
    text = ":".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little") >> 1


def generator(seed: int, *parts: object) -> torch.Generator:
    import torch

    return torch.Generator().manual_seed(derive_seed(seed, *parts))


def epoch_order(seed: int, epoch: int, count: int, what: str = "order") -> list[int]:
    """A seeded permutation of `count` things for one epoch: its items, or its batches."""
    import torch

    return torch.randperm(count, generator=generator(seed, what, epoch)).tolist()
