"""Caption augmentation, as kohya's: shuffled tags after the first `keep_tokens`, and dropout.

Every choice is drawn from the seed and the sample's global index, so a resumed run makes the
same choices.
"""

from __future__ import annotations

import random

from engine.seeds import derive_seed


def augment_caption(caption: str, *, seed: int, index: int, shuffle: bool, keep_tokens: int, dropout: float) -> str:
    rng = random.Random(derive_seed(seed, "caption", index))
    if dropout and rng.random() < dropout:
        return ""
    if not shuffle:
        return caption
    tags = [tag.strip() for tag in caption.split(",")]
    kept, rest = tags[:keep_tokens], tags[keep_tokens:]
    rng.shuffle(rest)
    return ", ".join(kept + rest)


def flip_sample(*, seed: int, index: int, enabled: bool) -> bool:
    """Whether this sample is trained mirrored (horizontal-flip augmentation)."""
    return enabled and random.Random(derive_seed(seed, "flip", index)).random() < 0.5
