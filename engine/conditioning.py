"""The text conditioning of a batch's captions, with the frozen text encoders' output cached.

The text encoders' output depends on the caption alone when they are frozen and the captions do
not vary from step to step (no tag shuffling, no caption dropout): then each caption is encoded
once, on its own, so that the values do not depend on which captions shared a batch (a resumed
run sees other batches first). Otherwise every batch is encoded afresh (with gradients when the
text encoders train).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine.config import Answers
from engine.parking import captions_cacheable

if TYPE_CHECKING:
    from engine.devices import Parking
    from engine.families import LoadedModel


class CaptionConditioning:
    def __init__(self, model: LoadedModel, answers: Answers, parking: Parking):
        self.model = model
        self.parking = parking
        self.clip_skip = answers.training.clip_skip
        self.text_encoders_trained = answers.network.train_text_encoder
        self.cacheable = captions_cacheable(answers)
        self.cache: dict[str, dict[str, Any]] = {}

    def __call__(self, captions: list[str]) -> dict[str, Any]:
        import torch

        if self.text_encoders_trained:
            return self.encode(captions)
        if not self.cacheable:  # too many variants to cache: encode each time, frozen
            with torch.no_grad():
                return self.encode(captions)
        self.encode_ahead(captions)
        parts = [self.cache[c] for c in captions]
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def encode(self, captions: list[str]) -> dict[str, Any]:
        family = self.model.family
        return family.encode(self.model, family.tokenize(self.model, captions), self.clip_skip)

    def encode_ahead(self, captions: list[str]) -> None:
        """Cache the conditioning of the captions not cached yet, each caption on its own."""
        import torch

        missing = [c for c in dict.fromkeys(captions) if c not in self.cache]
        if not missing:
            return
        with torch.no_grad(), self.parking.in_use("text_encoders"):
            for caption in missing:
                self.cache[caption] = self.encode([caption])
