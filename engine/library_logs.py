"""Library log lines that read like errors to a new user but ask nothing of them, silenced one
by one where the engine loads and samples models. Every other library warning still shows.

- transformers, when torchvision is missing: "`CLIPImageProcessor` requires torchvision (not
  installed); falling back to `CLIPImageProcessorPil`". The pipelines name an image processor
  for their safety checker; the engine never runs it, and the Pillow one is a full substitute.
- diffusers, on `.to(dtype)`: "There are modules in AutoencoderKL that should be kept in
  float32: []". With an empty list there is no such module: nothing to keep in float32.
"""

from __future__ import annotations

import logging

# logger name -> fragments of the lines dropped from it
NOISE: dict[str, tuple[str, ...]] = {
    "transformers.utils.import_utils": ("requires torchvision (not installed); falling back to",),
    "diffusers.models.modeling_utils": ("that should be kept in float32: [].",),
}


class _DropLines(logging.Filter):
    def __init__(self, fragments: tuple[str, ...]):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


def silence_known_noise() -> None:
    """Drop the lines in `NOISE` from their loggers (once per process; calling again is free)."""
    for name, fragments in NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropLines) for f in logger.filters):
            logger.addFilter(_DropLines(fragments))
