"""The base model `generate` and `reg generate` make images with: an answers file's, loaded as
training loads it, with the command line's options on top."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.config import Answers
    from engine.image_maker import ImageMaker


@dataclass
class BaseModel:
    """The base model to make images with, and how to load it."""

    path: Path
    tokenizer: Path | None = None
    prediction: str = "auto"
    vae: Path | None = None
    clip_skip: int = 1
    resolution: int | None = None  # None: the model family's
    flux: Any = None  # FLUX.1's other files and settings (engine.families.flux.FluxOptions), from the answers

    def load(self, device: str | None) -> ImageMaker:
        from engine.image_maker import ImageMaker

        return ImageMaker.from_path(
            self.path, device=device, tokenizer=self.tokenizer, prediction=self.prediction, clip_skip=self.clip_skip, vae=self.vae,
            flux=self.flux,
        )


def base_model(args: argparse.Namespace, answers: Answers | None, *, no_model_fix: str) -> BaseModel:
    """The answers file's base model, then --model, --tokenizer, --vae and --clip-skip on top.
    --model drops the answers file's tokenizer and prediction type: they belong to its model."""
    from engine.errors import UserError

    if answers is None and args.model is None:
        raise UserError("no base model given", fix=no_model_fix)
    if answers is None:
        base = BaseModel(path=args.model)
    else:
        model = answers.model
        base = BaseModel(
            path=model.path,
            tokenizer=model.tokenizer,
            prediction=model.prediction,
            vae=model.vae,
            clip_skip=answers.training.clip_skip,
            resolution=answers.dataset.resolution,
            flux=_flux_options(answers),
        )
        if args.model is not None:
            base.path, base.tokenizer, base.prediction, base.flux = args.model, None, "auto", None
    for option in ("tokenizer", "vae", "clip_skip"):
        value = getattr(args, option, None)  # `reg generate` has no --tokenizer or --clip-skip
        if value is not None:
            setattr(base, option, value)
    return base


def _flux_options(answers: Answers) -> Any:
    from engine.families.flux import flux_options  # light: no torch at import

    return flux_options(answers.model, answers.training)
