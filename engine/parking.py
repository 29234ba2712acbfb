"""Which frozen parts of a run wait in host memory once setup has cached their outputs, and why:
the rule on plain facts (no torch), so that the VRAM estimate (engine/checks/estimate.py) applies
the engine's own rule before any answers file exists. engine.devices.Parking carries it out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.config import Answers


def captions_cacheable(answers: Answers) -> bool:
    """A frozen text encoder's output depends on the caption alone, unless tags are shuffled or
    captions dropped: then there are too many variants to cache."""
    return conditioning_cacheable(text_encoders_trained=answers.network.train_text_encoder, captions_vary=captions_vary(answers))


def captions_vary(answers: Answers) -> bool:
    """Tags shuffled or captions dropped: an image's caption differs from step to step."""
    return bool(answers.dataset.shuffle_tags or answers.dataset.caption_dropout)


def conditioning_cacheable(*, text_encoders_trained: bool, captions_vary: bool) -> bool:
    return not text_encoders_trained and not captions_vary


def offloadable_parts(answers: Answers) -> frozenset[str]:
    """The frozen parts of this run that can wait in host memory once setup has run."""
    return parked_parts(
        latents_cached=answers.training.cache_latents != "off",
        text_encoders_trained=answers.network.train_text_encoder,
        captions_vary=captions_vary(answers),
    )


def parked_parts(*, latents_cached: bool, text_encoders_trained: bool, captions_vary: bool) -> frozenset[str]:
    """The frozen parts that can wait in host memory once setup has run: "vae" when every latent
    is cached (it comes back for sample images), "text_encoders" when they are frozen and every
    caption's conditioning is cached (the SDXL default: UNet only). On plain facts, so that the
    VRAM estimate (engine/checks/estimate.py) applies the same rule before any answers file exists."""
    parts = set()
    if latents_cached:
        parts.add("vae")
    if conditioning_cacheable(text_encoders_trained=text_encoders_trained, captions_vary=captions_vary):
        parts.add("text_encoders")
    return frozenset(parts)
