"""Single-file SDXL checkpoints in the original (SGM) layout, loaded offline.

Such a file holds `model.diffusion_model.*` (the UNet, SGM names), `first_stage_model.*` (the VAE),
`conditioner.embedders.0.transformer.text_model.*` (CLIP ViT-L in transformers' names) and
`conditioner.embedders.1.model.*` (OpenCLIP bigG in its own names). As for SD 1.x/2.x
(engine/families/single_file.py), the architecture comes from the tensor names and shapes with the
shipped configs (configs/sdxl/) as templates, diffusers' own single_file_utils converters rename the
tensors, and the models are loaded strictly.

Neither tokenizer is in the file. The first is looked up as for SD 1.x (given, beside the file, the
Hugging Face cache); the second is a `tokenizer_2/` folder next to the first when there is one, else
the first one padding with "!" (SDXL's tokenizer_2 is exactly that: CLIP's BPE vocabulary, OpenCLIP's
padding).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import ModelFileError
from engine.families.base import LoadedModel, ModelFamily, ModelInfo
from engine.families.checkpoint_files import single_file_note
from engine.families.file_prediction import prediction_from_file
from engine.families.ldm_config import (
    UNET_PREFIX,
    Architecture,
    clip_text_sizes,
    derive_unet_config,
    derive_vae_config,
    heads_for_width,
    indices_after,
    open_clip_text_sizes,
    shape_of,
)
from engine.families.ldm_models import build_unet, build_vae, load_text_encoder_strictly
from engine.families.objectives import NoisePrediction
from engine.families.sdxl import check_sdxl_layout, sdxl_second_tokenizer
from engine.families.templates import load_template, template_scheduler
from engine.families.tokenizers import (
    TokenizerSearch,
    find_tokenizer,
    is_tokenizer_folder,
    load_tokenizer,
    missing_tokenizer_error,
)

FIRST_ENCODER_PREFIX = "conditioner.embedders.0.transformer."  # CLIP ViT-L, transformers' names
FIRST_TEXT_MODEL_PREFIX = FIRST_ENCODER_PREFIX + "text_model."
SECOND_ENCODER_PREFIX = "conditioner.embedders.1.model."  # OpenCLIP ViT-bigG, its own names
SECOND_BLOCKS = SECOND_ENCODER_PREFIX + "transformer.resblocks."
REFINER_ENCODER_PREFIX = "conditioner.embedders.0.model."  # the refiner has only OpenCLIP bigG
OPEN_CLIP_HEAD_WIDTH = 64  # CLIP ViT-L and OpenCLIP bigG both use 64-wide heads


def check_sdxl_base_keys(keys: Any, path: Path) -> None:
    """Both text encoders of SDXL's base model are in the file; the refiner (one encoder) is refused."""
    keys = list(keys)
    if any(key.startswith(REFINER_ENCODER_PREFIX) for key in keys):
        raise ModelFileError(
            "this is an SDXL refiner; LoRAs are trained on the base model",
            where=path,
            fix="give an SDXL base model or a model built on it (Pony, Illustrious, NoobAI...)",
        )
    for prefix, what in ((FIRST_TEXT_MODEL_PREFIX, "first (CLIP ViT-L)"), (SECOND_BLOCKS, "second (OpenCLIP bigG)")):
        if not any(key.startswith(prefix) for key in keys):
            raise ModelFileError(
                f"this SDXL checkpoint has no {what} text encoder (`{prefix}*`): it is incomplete",
                where=path,
                fix="use the full model file (not a UNet-only file)",
            )


# --------------------------------------------------------------------------------------------------
# Architecture from names and shapes
# --------------------------------------------------------------------------------------------------


def derive_sdxl_unet_config(shapes: dict[str, tuple[int, ...]], path: Path) -> dict[str, Any]:
    """SDXL's UNet config with the sizes of this file: widths, depths per level, embedding sizes."""
    config = derive_unet_config(shapes, "sdxl", path)
    unet = {key[len(UNET_PREFIX) :]: shape for key, shape in shapes.items() if key.startswith(UNET_PREFIX)}
    layers = config["layers_per_block"]
    depths = []
    for level, block_type in enumerate(config["down_block_types"]):
        first = f"input_blocks.{1 + level * (layers + 1)}.1.transformer_blocks."
        # SDXL's depth per level ((1, 2, 10)); a level without attention keeps the template's unused 1.
        depths.append(len(indices_after(unet, first)) if block_type.startswith("CrossAttn") else 1)
    embedding_input = shape_of(unet, "label_emb.0.0.weight", path)[1]
    pooled = shape_of(shapes, SECOND_ENCODER_PREFIX + "text_projection", path)[1]
    config.update(
        transformer_layers_per_block=depths,
        projection_class_embeddings_input_dim=embedding_input,
        addition_time_embed_dim=(embedding_input - pooled) // 6,  # six size numbers after the pooled text
    )
    check_sdxl_layout(config, path)
    return config


def derive_first_text_encoder_config(shapes: dict[str, tuple[int, ...]], path: Path) -> dict[str, Any]:
    config = load_template("sdxl", "text_encoder")
    sizes = clip_text_sizes(shapes, FIRST_TEXT_MODEL_PREFIX, path)
    config.update(sizes, num_attention_heads=heads_for_width(sizes["hidden_size"], OPEN_CLIP_HEAD_WIDTH))
    return config


def derive_second_text_encoder_config(shapes: dict[str, tuple[int, ...]], path: Path) -> dict[str, Any]:
    config = load_template("sdxl", "text_encoder_2")
    sizes = open_clip_text_sizes(shapes, SECOND_ENCODER_PREFIX, path)  # every block: the pooled output needs the last
    config.update(
        sizes,
        num_attention_heads=heads_for_width(sizes["hidden_size"], OPEN_CLIP_HEAD_WIDTH),
        projection_dim=shape_of(shapes, SECOND_ENCODER_PREFIX + "text_projection", path)[1],
    )
    return config


def derive_sdxl_architecture(shapes: dict[str, tuple[int, ...]], path: Path) -> Architecture:
    check_sdxl_base_keys(shapes, path)
    return Architecture(
        family="sdxl",
        unet=derive_sdxl_unet_config(shapes, path),
        vae=derive_vae_config(shapes, "sdxl", path),
        text_encoder=derive_first_text_encoder_config(shapes, path),
        text_encoder_2=derive_second_text_encoder_config(shapes, path),
    )


# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------


def build_first_text_encoder(config: dict[str, Any], tensors: dict[str, Any], path: Path) -> Any:
    from accelerate import init_empty_weights
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel

    with init_empty_weights():
        text_encoder = CLIPTextModel(CLIPTextConfig(**config))
    own = {key: value for key, value in tensors.items() if key.startswith(FIRST_ENCODER_PREFIX)}
    converted = convert_ldm_clip_checkpoint(own, remove_prefix=FIRST_ENCODER_PREFIX)
    return load_text_encoder_strictly(text_encoder, converted, "first text encoder", path)


def build_second_text_encoder(config: dict[str, Any], tensors: dict[str, Any], path: Path) -> Any:
    from accelerate import init_empty_weights
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    with init_empty_weights():
        text_encoder = CLIPTextModelWithProjection(CLIPTextConfig(**config))
    own = {key: value for key, value in tensors.items() if key.startswith(SECOND_ENCODER_PREFIX)}
    converted = convert_open_clip_checkpoint(text_encoder, own, prefix=SECOND_ENCODER_PREFIX)
    return load_text_encoder_strictly(text_encoder, converted, "second text encoder", path)


# --------------------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------------------


@dataclass
class SdxlTokenizers:
    first: TokenizerSearch
    second: Path | None  # a tokenizer_2 folder; None: made from the first one (same vocabulary, "!" padding)

    @property
    def note(self) -> str:
        if self.first.folder is None:
            return "not found; looked in: " + "; ".join(self.first.looked)
        second = str(self.second) if self.second else 'the first one padding with "!" (no tokenizer_2 folder found)'
        return f"{self.first.looked[-1]}; second tokenizer: {second}"


def find_sdxl_tokenizers(path: Path, tokenizer_dir: Path | None) -> SdxlTokenizers:
    """The first tokenizer as for SD 1.x (`[model] tokenizer`, `tokenizer/` beside the file, the HF cache),
    the second from a `tokenizer_2/` folder beside the first (or in `[model] tokenizer`) when there is one."""
    first = find_tokenizer(path, "sdxl", tokenizer_dir)
    if first.folder is None:
        return SdxlTokenizers(first, None)
    candidates = [first.folder.parent / "tokenizer_2"]
    if tokenizer_dir is not None:
        candidates.insert(0, tokenizer_dir / "tokenizer_2")
    second = next((candidate for candidate in candidates if is_tokenizer_folder(candidate)), None)
    return SdxlTokenizers(first, second)


def load_sdxl_tokenizers(search: SdxlTokenizers, architecture: Architecture, path: Path) -> list[Any]:
    assert search.first.folder is not None
    first = load_tokenizer(search.first.folder, architecture.text_encoder["vocab_size"], path)
    if search.second is None:
        return [first, sdxl_second_tokenizer(first)]
    return [first, load_tokenizer(search.second, architecture.text_encoder_2["vocab_size"], path)]


# --------------------------------------------------------------------------------------------------
# Loading and inspecting
# --------------------------------------------------------------------------------------------------

EPSILON_REASON = 'SDXL base models predict noise (set `[model] prediction = "v_prediction"` for a v-prediction model)'


def sdxl_prediction(path: Path, keys: Any, metadata: dict[str, str], requested: str = "auto") -> tuple[str, str]:
    """The prediction type: the answers file, else what the file says, else epsilon (SDXL's own)."""
    if requested in ("epsilon", "v_prediction"):
        return requested, "set in the answers file"
    return prediction_from_file(path, keys, metadata) or ("epsilon", EPSILON_REASON)


def load_sdxl_single_file(
    path: Path,
    family: ModelFamily,
    tensors: dict[str, Any],
    metadata: dict[str, str],
    architecture: Architecture,
    *,
    prediction: str,
    tokenizer_dir: Path | None,
) -> LoadedModel:
    """Build the models of an SDXL-architecture `family` from a file's tensors (read by single_file.read_checkpoint)."""
    search = find_sdxl_tokenizers(path, tokenizer_dir)
    if search.first.folder is None:
        raise missing_tokenizer_error(path, "sdxl", search.first)
    tokenizers = load_sdxl_tokenizers(search, architecture, path)
    unet = build_unet(architecture.unet, tensors, path)
    vae = build_vae(architecture.vae, tensors, path)
    first = build_first_text_encoder(architecture.text_encoder, tensors, path)
    second = build_second_text_encoder(architecture.text_encoder_2, tensors, path)
    prediction_type, reason = sdxl_prediction(path, tensors.keys(), metadata, prediction)
    return LoadedModel(
        family=family,
        denoiser=unet,
        vae=vae,
        text_encoders=[first, second],
        tokenizers=tokenizers,
        objective=NoisePrediction(template_scheduler("sdxl", prediction_type), prediction_type),
        source=path,
        notes=[
            single_file_note(family.label, path, tensors),
            f"{prediction_type} prediction: {reason}",
            f"tokenizers: {search.note}",
        ],
    )


def inspect_sdxl_file(
    path: Path, family: ModelFamily, shapes: dict[str, tuple[int, ...]], metadata: dict[str, str], tokenizer: Path | None
) -> ModelInfo:
    """What an SDXL-architecture file is, from its header: prediction type and tokenizers."""
    prediction, reason = sdxl_prediction(path, shapes.keys(), metadata)
    search = find_sdxl_tokenizers(path, tokenizer)
    return ModelInfo(
        family=family.name,
        label=family.label,
        layout="single file",
        prediction=prediction,
        prediction_reason=reason,
        tokenizer=search.first.folder,
        tokenizer_note=search.note,
        source=path,
    )
