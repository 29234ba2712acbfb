"""The family interface: what SD 1.x, SD 2.x and SDXL (and the families after them) each fill in.

- `ModelFamily`: how captions become the denoiser's conditioning (`tokenize`, `encode`), how the
  denoiser is run (`predict`), and kohya's LoRA key names;
- `LoadedModel`: a loaded base model: its family, denoiser, VAE, text encoders, tokenizers and the
  training objective (engine/families/objectives.py) its family trains it with;
- `ImageGeometry`: how a training image was fitted to its bucket (SDXL conditions on it);
- `ModelInfo`: what a base model is, found without reading weights.

The training loop, LoRA wrapping and sampling only use these; docs/families.md says what a new
family adds and how the modules of this package depend on each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from engine.families.objectives import TrainingObjective


@dataclass(frozen=True)
class ImageGeometry:
    """How a training image was fitted to its bucket, in pixels (SDXL's size conditioning)."""

    original: tuple[int, int]  # (width, height) of the image file, EXIF rotation applied
    crop_top_left: tuple[int, int]  # (top, left) of the crop in the resized image
    target: tuple[int, int]  # (width, height) trained at: the bucket


@dataclass
class LoadedModel:
    """The components of a base model, ready to train."""

    family: ModelFamily
    denoiser: Any  # the network the LoRA trains: a diffusers UNet2DConditionModel for SD 1.x/2.x/SDXL
    vae: Any
    text_encoders: list[Any]
    tokenizers: list[Any]
    objective: TrainingObjective  # how the denoiser is trained; holds the scheduler and prediction type
    source: Path
    notes: list[str] = field(default_factory=list)  # what loading decided, for the plan printout


class ModelFamily:
    """What differs between SD 1.x, SD 2.x and SDXL. Subclasses fill in the details."""

    name: str = ""  # "sd1", "sd2", "sdxl"
    label: str = ""  # for people: "SD 1.x"
    base_model_version: str = ""  # kohya's ss_base_model_version
    modelspec_architecture: str = ""  # modelspec.architecture of a LoRA for this family
    default_resolution: int = 512
    denoiser_label: str = "UNet"  # what the family's denoiser is called, for people ("transformer")
    text_encoder_prefixes: tuple[str, ...] = ("lora_te",)

    def tokenize(self, model: LoadedModel, captions: list[str]) -> list[torch.Tensor]:
        """Token ids per text encoder, padded to the tokenizer's max length."""
        return [
            tokenizer(
                captions,
                padding="max_length",
                max_length=tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids
            for tokenizer in model.tokenizers
        ]

    def encode(self, model: LoadedModel, token_ids: list[torch.Tensor], clip_skip: int = 1) -> dict[str, Any]:
        """The denoiser's conditioning for a batch of token ids (keyword arguments of `predict`)."""
        raise NotImplementedError

    def predict(
        self,
        model: LoadedModel,
        noisy_latents: torch.Tensor,
        timesteps: torch.Tensor,
        conditioning: dict[str, Any],
        geometry: list[ImageGeometry] | None = None,
    ) -> torch.Tensor:
        """The denoiser's prediction for `noisy_latents` (in the layout the objective made them).
        `conditioning` is what `encode` returned (batch-first tensors) plus the objective's extra
        inputs; `geometry` says how each image was sized and cropped (SDXL conditions on it)."""
        return model.denoiser(noisy_latents, timesteps, **conditioning, return_dict=False)[0]

    def kohya_unet_name(self, module_path: str) -> str:
        """kohya's key stem for a UNet module given its diffusers path (`down_blocks.0...`)."""
        raise NotImplementedError

    def kohya_text_encoder_name(self, index: int, module_path: str) -> str:
        """kohya's key stem for module `module_path` of text encoder `index`."""
        raise NotImplementedError

    # --- what a family may do differently; the defaults are SD 1.x / 2.x / SDXL's -------------------

    network_module: str = "networks.lora"  # kohya's ss_network_module of this family's LoRAs
    modelspec_implementation: str = ""  # modelspec.implementation when not SD's (diffusers / SGM)

    def lora_targets(self, denoiser: Any) -> list[str] | None:
        """The denoiser's modules that get a LoRA; None: kohya's default UNet targets (engine/network/targets.py)."""
        return None

    def trainable_text_encoders(self, model: LoadedModel) -> list[Any]:
        """The text encoders a LoRA may train (FLUX.1: CLIP-L, never T5)."""
        return list(model.text_encoders)

    def kohya_tensors(self, denoiser_layers: list[tuple[str, Any, Any, float]], text_layers: list[tuple[str, Any, Any, float]], dtype: Any) -> dict[str, Any] | None:
        """The LoRA file's tensors from (module path, lora_A weight, lora_B weight, alpha) of each
        trained layer, when the family writes them other than one kohya module per trained layer
        (FLUX.1 fuses q, k and v); None: the default."""
        return None

    def lora_metadata(self, answers: Any) -> dict[str, str]:
        """Family-specific `ss_*` keys of the LoRA file, on top of the common ones."""
        return {}


@dataclass
class ModelInfo:
    """What a base model is, found cheaply (no weights read): for `--dry-run` and the wizard."""

    family: str  # "sd1", "sd2", "sdxl", "flux1-dev", "flux1-schnell"
    label: str  # "SD 1.x"
    layout: str  # "diffusers folder" or "single file"
    prediction: str  # "epsilon", "v_prediction" or "unknown" (an SD 2.x file decided only when loading)
    prediction_reason: str
    tokenizer: Path | None  # None: not found; tokenizer_note says where it looked
    tokenizer_note: str
    source: Path
