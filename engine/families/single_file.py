"""Single-file Stable Diffusion checkpoints (.safetensors / .ckpt in the original CompVis/LDM layout).

These are the files AUTOMATIC1111 users keep in `models/Stable-diffusion`. Loading them needs no network:

- the state dict is read safely (a .ckpt is unpickled with `weights_only=True`; only a few known-harmless
  training-time objects are allowed, as inert stand-ins);
- the family (SD 1.x / SD 2.x / SDXL, whose details are in sdxl_file.py) and the exact architecture come
  from the tensor names and shapes, with the published configs shipped in `configs/` as templates, so a
  real SD 1.5 file and a tiny test file take the same path;
- diffusers' own `single_file_utils` converters map the LDM names to diffusers names; the models are built
  from the derived configs and loaded strictly;
- the tokenizer is not in the file: it is looked up beside the file, in the answers file, or in the
  Hugging Face cache.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import ModelFileError
from engine.families import LoadedModel, ModelInfo
from engine.families.objectives import NoisePrediction

CONFIG_DIR = Path(__file__).parent / "configs"
TEMPLATE_FOLDERS = {"sd1": "sd15", "sd2": "sd2", "sdxl": "sdxl"}
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth")

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."  # SD 1.x: transformers' CLIPTextModel, wrapped
CLIP_TEXT_MODEL_PREFIX = CLIP_PREFIX + "text_model."
OPEN_CLIP_PREFIX = "cond_stage_model.model."  # SD 2.x: OpenCLIP ViT-H
OPEN_CLIP_BLOCKS = OPEN_CLIP_PREFIX + "transformer.resblocks."
SDXL_PREFIX = "conditioner.embedders."

# Real CLIP / OpenCLIP text encoders and SD 2.x's UNet use 64-wide attention heads. Layers narrower than
# one such head only exist in this project's tiny test models, which use 8-wide heads (engine/tiny.py:
# hidden 32, 4 heads).
TINY_HEAD_WIDTH = 8

# Where a tokenizer can come from when the file carries none: (repository, subfolder).
HF_TOKENIZERS = {
    "sd1": ("openai/clip-vit-large-patch14", ""),
    "sd2": ("stabilityai/stable-diffusion-2-1", "tokenizer"),
    "sdxl": ("stabilityai/stable-diffusion-xl-base-1.0", "tokenizer"),
}
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")
# Downloads that failed in this process: the wizard inspects the model often, a dead network costs once.
_FAILED_DOWNLOADS: dict[str, str] = {}


# --------------------------------------------------------------------------------------------------
# Reading the file
# --------------------------------------------------------------------------------------------------


class _InertStandIn:
    """Takes the place of a pickled training-time object (a Lightning callback): holds its state, runs nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass


# Globals that real SD .ckpt files pickle besides tensors, all inert data. Lightning callbacks are
# replaced by `_InertStandIn`; numpy's array/scalar constructors only rebuild data.
_STAND_IN_NAMES = (
    "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
    "pytorch_lightning.callbacks.early_stopping.EarlyStopping",
    "pytorch_lightning.callbacks.lr_monitor.LearningRateMonitor",
    "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint",
    "lightning.pytorch.callbacks.early_stopping.EarlyStopping",
    "lightning.pytorch.callbacks.lr_monitor.LearningRateMonitor",
)


def _known_harmless_globals() -> list[tuple[Any, str]]:
    allowed: list[tuple[Any, str]] = [(_InertStandIn, name) for name in _STAND_IN_NAMES]
    try:
        import numpy
    except ImportError:  # numpy is optional for torch; files needing it then fail as "contains code"
        return allowed
    multiarray = numpy._core.multiarray if hasattr(numpy, "_core") else numpy.core.multiarray
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed += [(multiarray.scalar, f"{module}.scalar"), (multiarray._reconstruct, f"{module}._reconstruct")]
    allowed += [(numpy.ndarray, "numpy.ndarray"), (numpy.dtype, "numpy.dtype")]
    for dtype_name in ("Float64DType", "Float32DType", "Float16DType", "Int64DType", "Int32DType", "BoolDType"):
        if hasattr(getattr(numpy, "dtypes", None), dtype_name):
            allowed.append((getattr(numpy.dtypes, dtype_name), f"numpy.dtypes.{dtype_name}"))
    return allowed


@contextmanager
def _harmless_globals_allowed() -> Iterator[None]:
    import torch

    with torch.serialization.safe_globals(_known_harmless_globals()):
        yield


# What torch's weights-only unpickler says when it refuses a global (as opposed to a damaged pickle).
_CODE_REFUSALS = ("Unsupported global", "unrecognized function", "Can only build", "Can only create new object", "is blocked")
# The refused global's name, in both of torch's spellings: "Unsupported global: GLOBAL getattr was not an
# allowed global ..." and "Trying to load unsupported GLOBAL posix.system whose module posix is blocked".
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def _refuse_code(path: Path, names: list[str] | str) -> ModelFileError:
    what = ", ".join(sorted(names)) if isinstance(names, list) else names
    return ModelFileError(
        f"this checkpoint contains code (pickled objects: {what}) and was not loaded; nothing in it was run",
        where=path,
        fix="use a .safetensors version of this model (most model pages offer one), or convert it with a tool you trust",
    )


def read_pickle_checkpoint(path: Path, *, mmap: bool = False) -> dict[str, Any]:
    """Tensors of a .ckpt/.pt file, unpickled with `weights_only=True`: pickled code is never executed."""
    import pickle

    import torch

    with _harmless_globals_allowed():
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except ValueError:
            unsafe = []  # legacy (pre-zip) format: the weights-only unpickler below still refuses code
        except (OSError, RuntimeError) as exc:
            raise _damaged(path, exc) from None
        if unsafe:
            raise _refuse_code(path, unsafe)
        try:
            with warnings.catch_warnings():  # torch warns about legacy formats on stderr
                warnings.simplefilter("ignore")
                loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except pickle.UnpicklingError as exc:
            message = str(exc)
            if not any(marker in message for marker in _CODE_REFUSALS):
                raise _damaged(path, exc) from None
            # Name what was refused; never pass on torch's advice to allowlist it or to drop weights_only.
            refused = sorted(set(_REFUSED_GLOBAL.findall(message))) or "an object torch's safe loader refuses"
            raise _refuse_code(path, refused) from None
        except (OSError, RuntimeError, EOFError, ValueError) as exc:
            if mmap:  # legacy formats cannot be memory-mapped
                return read_pickle_checkpoint(path, mmap=False)
            raise _damaged(path, exc) from None
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise ModelFileError("this file holds no state dict of tensors", where=path, fix="give a Stable Diffusion checkpoint")
    return {key: value for key, value in loaded.items() if isinstance(key, str) and isinstance(value, torch.Tensor)}


def _damaged(path: Path, exc: BaseException) -> ModelFileError:
    # Only the first line of the library's message: torch's long advice (e.g. to turn weights_only
    # off) is not for our users.
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return ModelFileError(
        f"cannot read this model file, it is damaged or incomplete ({reason})",
        where=path,
        fix="download the file again (compare its size or hash with the model page)",
    )


def read_safetensors(path: Path, keys: list[str]) -> dict[str, Any]:
    """The tensors `keys` of a .safetensors file."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as handle:
            return {key: handle.get_tensor(key) for key in keys}
    except (SafetensorError, OSError, ValueError) as exc:
        raise _damaged(path, exc) from None


def read_safetensors_shapes(path: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """Tensor shapes and metadata from the header alone: no weights are read."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as handle:
            metadata = handle.metadata() or {}
            names = handle.keys()
            shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in names}
    except (SafetensorError, OSError, ValueError) as exc:
        raise _damaged(path, exc) from None
    return shapes, metadata


def is_model_tensor(key: str) -> bool:
    """UNet, VAE, text encoders and the `v_pred` marker; not EMA copies, optimizer or scheduler buffers."""
    return key.startswith((UNET_PREFIX, VAE_PREFIX, "cond_stage_model.", SDXL_PREFIX)) or key == "v_pred"


def read_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, str], Architecture]:
    """Model tensors (LDM names), safetensors metadata and architecture of a single-file model.

    A .safetensors file is checked from its header before any weight is read.
    """
    _check_single_file_path(path)
    if path.suffix.lower() == ".safetensors":
        shapes, metadata = read_safetensors_shapes(path)
        architecture = derive_architecture(normalize_ldm_keys(dict(shapes)), path)
        tensors = read_safetensors(path, [key for key in shapes if is_model_tensor(key)])
    else:
        loaded, metadata = read_pickle_checkpoint(path, mmap=True), {}
        architecture = derive_architecture(normalize_ldm_keys({key: tuple(value.shape) for key, value in loaded.items()}), path)
        tensors = {key: value for key, value in loaded.items() if is_model_tensor(key)}
    return normalize_ldm_keys(tensors), metadata, architecture


def _check_single_file_path(path: Path) -> None:
    if not path.exists():
        raise ModelFileError("the base model does not exist", where=path, fix="check the path in the answers file", key="model.path")
    if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
        raise ModelFileError(
            f"`{path.suffix}` is not a model file this tool reads",
            where=path,
            fix="give a .safetensors or .ckpt file, or a diffusers model folder",
        )


def normalize_ldm_keys(tensors: dict[str, Any]) -> dict[str, Any]:
    """Old SD 1.x files name the CLIP text encoder without transformers' `text_model.` level; add it."""
    legacy = [key for key in tensors if key.startswith(CLIP_PREFIX) and not key.startswith(CLIP_TEXT_MODEL_PREFIX)]
    for key in legacy:
        tensors[CLIP_TEXT_MODEL_PREFIX + key[len(CLIP_PREFIX) :]] = tensors.pop(key)
    return tensors


# --------------------------------------------------------------------------------------------------
# Family and architecture from names and shapes
# --------------------------------------------------------------------------------------------------


def detect_family(keys: Any, path: Path) -> str:
    """The family ("sd1", "sd2" or "sdxl") from the state-dict key names; anything else is a ModelFileError."""
    keys = list(keys)
    if any(key.startswith(SDXL_PREFIX) for key in keys):
        family = "sdxl"
    elif any(key.startswith(OPEN_CLIP_BLOCKS) for key in keys):
        family = "sd2"
    elif any(key.startswith(CLIP_TEXT_MODEL_PREFIX) for key in keys):
        family = "sd1"
    else:
        raise ModelFileError(
            f"this is not a Stable Diffusion checkpoint ({_what_it_looks_like(keys)})",
            where=path,
            fix="give an SD 1.x, SD 2.x or SDXL base model (.safetensors, .ckpt or a diffusers folder)",
        )
    for prefix, part in ((UNET_PREFIX, "UNet"), (VAE_PREFIX, "VAE")):
        if not any(key.startswith(prefix) for key in keys):
            raise ModelFileError(
                f"this checkpoint has no {part} weights (`{prefix}*`): it is incomplete",
                where=path,
                fix="use the full model file (not a pruned text-encoder-only or UNet-only file)",
            )
    return family


def _what_it_looks_like(keys: list[str]) -> str:
    if any(key.startswith("lora_") for key in keys):
        return "it looks like a LoRA, not a base model"
    if any(key.startswith(("encoder.down", "decoder.up")) for key in keys):
        return "it looks like a VAE on its own"
    if any(key.startswith(("down_blocks.", "up_blocks.")) for key in keys):
        return "it looks like a diffusers UNet on its own"
    return f"none of its {len(keys)} tensors has a Stable Diffusion name"


def load_template(family: str, part: str) -> dict[str, Any]:
    """The published config of one component (SD 1.5 / SD 2.1), shipped with the package."""
    return json.loads((CONFIG_DIR / TEMPLATE_FOLDERS[family] / f"{part}.json").read_text(encoding="utf-8"))


def _indices(shapes: dict[str, tuple[int, ...]], prefix: str) -> list[int]:
    """The distinct integers right after `prefix` in the key names (`prefix3.weight` -> 3)."""
    found = {int(match.group(1)) for key in shapes if (match := re.match(re.escape(prefix) + r"(\d+)\.", key))}
    return sorted(found)


def _shape(shapes: dict[str, tuple[int, ...]], key: str, path: Path) -> tuple[int, ...]:
    if key not in shapes:
        raise ModelFileError(
            f"this checkpoint has no tensor `{key}`: it is incomplete or not a standard SD model",
            where=path,
            fix="use the original model file",
        )
    return shapes[key]


def heads_for_width(width: int, head_width: int) -> int:
    """Attention heads of a layer `width` wide whose family uses `head_width`-wide heads."""
    if width % head_width == 0:
        return width // head_width
    return max(1, width // TINY_HEAD_WIDTH)


def derive_unet_config(shapes: dict[str, tuple[int, ...]], family: str, path: Path) -> dict[str, Any]:
    config = load_template(family, "unet")
    unet = {key[len(UNET_PREFIX) :]: shape for key, shape in shapes.items() if key.startswith(UNET_PREFIX)}
    conv_in = _shape(unet, "input_blocks.0.0.weight", path)
    input_blocks = _indices(unet, "input_blocks.")
    levels = 1 + sum(f"input_blocks.{i}.0.op.weight" in unet for i in input_blocks)
    layers_per_block = (len(input_blocks) - 1 - (levels - 1)) // levels
    first_blocks = [1 + level * (layers_per_block + 1) for level in range(levels)]
    block_out_channels = [_shape(unet, f"input_blocks.{i}.0.out_layers.3.weight", path)[0] for i in first_blocks]
    has_attention = [f"input_blocks.{i}.1.proj_in.weight" in unet for i in first_blocks]
    attention = next((i for i, has in zip(first_blocks, has_attention, strict=True) if has), None)
    if attention is None:
        raise ModelFileError("this UNet has no cross-attention blocks", where=path, fix="give a Stable Diffusion checkpoint")
    config.update(
        in_channels=conv_in[1],
        out_channels=_shape(unet, "out.2.weight", path)[0],
        block_out_channels=block_out_channels,
        layers_per_block=layers_per_block,
        down_block_types=["CrossAttnDownBlock2D" if has else "DownBlock2D" for has in has_attention],
        up_block_types=["CrossAttnUpBlock2D" if has else "UpBlock2D" for has in reversed(has_attention)],
        cross_attention_dim=_shape(unet, f"input_blocks.{attention}.1.transformer_blocks.0.attn2.to_k.weight", path)[1],
        use_linear_projection=len(_shape(unet, f"input_blocks.{attention}.1.proj_in.weight", path)) == 2,
        transformer_layers_per_block=len(_indices(unet, f"input_blocks.{attention}.1.transformer_blocks.")),
        attention_head_dim=_unet_heads(config, block_out_channels),
    )
    if block_out_channels[0] < 64:  # only our tiny test models are this narrow (see engine/tiny.py)
        from engine.tiny import TINY_UNET_NORM_GROUPS

        config["norm_num_groups"] = TINY_UNET_NORM_GROUPS
    return config


def _unet_heads(template: dict[str, Any], block_out_channels: list[int]) -> int | list[int]:
    """SD 1.x fixes the number of heads (8); SD 2.x fixes their width (64) so the count grows with width.

    diffusers calls both `attention_head_dim` (a historical misnomer: it is the head count)."""
    heads = template["attention_head_dim"]
    if isinstance(heads, int):
        return heads
    head_width = template["block_out_channels"][0] // heads[0]
    return [heads_for_width(width, head_width) for width in block_out_channels]


def derive_vae_config(shapes: dict[str, tuple[int, ...]], family: str, path: Path) -> dict[str, Any]:
    config = load_template(family, "vae")
    vae = {key[len(VAE_PREFIX) :]: shape for key, shape in shapes.items() if key.startswith(VAE_PREFIX)}
    levels = _indices(vae, "encoder.down.")
    conv_in = _shape(vae, "encoder.conv_in.weight", path)
    config.update(
        in_channels=conv_in[1],
        out_channels=_shape(vae, "decoder.conv_out.weight", path)[0],
        block_out_channels=[_shape(vae, f"encoder.down.{level}.block.0.conv2.weight", path)[0] for level in levels],
        layers_per_block=len(_indices(vae, "encoder.down.0.block.")),
        latent_channels=_shape(vae, "post_quant_conv.weight", path)[0],
        down_block_types=["DownEncoderBlock2D"] * len(levels),
        up_block_types=["UpDecoderBlock2D"] * len(levels),
    )
    return config


def clip_text_sizes(shapes: dict[str, tuple[int, ...]], prefix: str, path: Path) -> dict[str, int]:
    """CLIPTextConfig sizes of a CLIP text encoder stored in transformers' names under `prefix` (`...text_model.`)."""
    vocab_size, hidden = _shape(shapes, prefix + "embeddings.token_embedding.weight", path)
    return {
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "max_position_embeddings": _shape(shapes, prefix + "embeddings.position_embedding.weight", path)[0],
        "num_hidden_layers": len(_indices(shapes, prefix + "encoder.layers.")),
        "intermediate_size": _shape(shapes, prefix + "encoder.layers.0.mlp.fc1.weight", path)[0],
    }


def open_clip_text_sizes(shapes: dict[str, tuple[int, ...]], prefix: str, path: Path) -> dict[str, int]:
    """CLIPTextConfig sizes of an OpenCLIP text encoder stored in its own names under `prefix` (`...model.`),
    every block counted."""
    blocks = prefix + "transformer.resblocks."
    vocab_size, hidden = _shape(shapes, prefix + "token_embedding.weight", path)
    return {
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "max_position_embeddings": _shape(shapes, prefix + "positional_embedding", path)[0],
        "num_hidden_layers": len(_indices(shapes, blocks)),
        "intermediate_size": _shape(shapes, blocks + "0.mlp.c_fc.weight", path)[0],
    }


def derive_text_encoder_config(shapes: dict[str, tuple[int, ...]], family: str, path: Path) -> dict[str, Any]:
    config = load_template(family, "text_encoder")
    template_head_width = config["hidden_size"] // config["num_attention_heads"]
    if family == "sd1":
        sizes = clip_text_sizes(shapes, CLIP_TEXT_MODEL_PREFIX, path)
    else:
        sizes = open_clip_text_sizes(shapes, OPEN_CLIP_PREFIX, path)
        # SD 2.x conditions on OpenCLIP's penultimate layer: diffusers' CLIPTextModel drops the last block.
        sizes["num_hidden_layers"] -= 1
    config.update(sizes, num_attention_heads=heads_for_width(sizes["hidden_size"], template_head_width))
    return config


@dataclass
class Architecture:
    """What a single file holds, derived from its tensor names and shapes."""

    family: str
    unet: dict[str, Any]
    vae: dict[str, Any]
    text_encoder: dict[str, Any]
    text_encoder_2: dict[str, Any] | None = None  # SDXL's second (OpenCLIP bigG) text encoder


def derive_architecture(shapes: dict[str, tuple[int, ...]], path: Path) -> Architecture:
    family = detect_family(shapes, path)
    if family == "sdxl":
        from engine.families.sdxl_file import derive_sdxl_architecture

        return derive_sdxl_architecture(shapes, path)
    unet = derive_unet_config(shapes, family, path)
    if unet["in_channels"] != 4:
        raise ModelFileError(
            f"this UNet takes {unet['in_channels']} input channels (an inpainting or instruct-pix2pix model); LoRA training needs a plain text-to-image model",
            where=path,
            fix="use the base (non-inpainting) version of this model",
        )
    return Architecture(
        family=family,
        unet=unet,
        vae=derive_vae_config(shapes, family, path),
        text_encoder=derive_text_encoder_config(shapes, family, path),
    )


# --------------------------------------------------------------------------------------------------
# Building the diffusers / transformers models
# --------------------------------------------------------------------------------------------------


def _float32(state_dict: dict[str, Any]) -> dict[str, Any]:
    import torch

    return {key: value.to(torch.float32) if value.is_floating_point() else value for key, value in state_dict.items()}


def _load_strictly(model: Any, state_dict: dict[str, Any], part: str, path: Path) -> Any:
    """Fill a model built on the meta device; any missing, extra or mis-shaped tensor is an error."""
    try:
        model.load_state_dict(_float32(state_dict), strict=True, assign=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise ModelFileError(
            f"the {part} weights in this checkpoint do not match a standard {part}: {detail[:600]}",
            where=path,
            fix="use an unmodified SD 1.x / SD 2.x / SDXL checkpoint",
        ) from None
    return model.eval()


def build_unet(config: dict[str, Any], tensors: dict[str, Any], path: Path) -> Any:
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(config)
    return _load_strictly(unet, convert_ldm_unet_checkpoint(tensors, config), "UNet", path)


def build_vae(config: dict[str, Any], tensors: dict[str, Any], path: Path) -> Any:
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    vae_tensors = {key: value for key, value in tensors.items() if key.startswith(VAE_PREFIX)}
    with init_empty_weights():
        vae = AutoencoderKL.from_config(config)
    return _load_strictly(vae, convert_ldm_vae_checkpoint(vae_tensors, config), "VAE", path)


def build_text_encoder(family: str, config: dict[str, Any], tensors: dict[str, Any], path: Path) -> Any:
    from accelerate import init_empty_weights
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_open_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel

    with init_empty_weights():
        text_encoder = CLIPTextModel(CLIPTextConfig(**config))
    if family == "sd1":
        converted = convert_ldm_clip_checkpoint({k: v for k, v in tensors.items() if k.startswith(CLIP_PREFIX)})
    else:
        converted = convert_open_clip_checkpoint(text_encoder, _penultimate_open_clip(tensors, config), prefix=OPEN_CLIP_PREFIX)
    return load_text_encoder_strictly(text_encoder, converted, "text encoder", path)


def load_text_encoder_strictly(text_encoder: Any, converted: dict[str, Any], part: str, path: Path) -> Any:
    """Fill a CLIP text encoder built on the meta device with weights diffusers' converters renamed."""
    if not hasattr(text_encoder, "text_model"):  # transformers >= 5 flattened CLIPTextModel
        converted = {key.removeprefix("text_model."): value for key, value in converted.items()}
    converted.pop("embeddings.position_ids", None)  # a buffer transformers no longer saves
    converted.pop("text_model.embeddings.position_ids", None)
    return _load_strictly(text_encoder, converted, part, path)


def _penultimate_open_clip(tensors: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """OpenCLIP tensors without the last block and the projection, which SD 2.x never uses."""
    kept_blocks = config["num_hidden_layers"]
    kept = {}
    for key, value in tensors.items():
        if not key.startswith(OPEN_CLIP_PREFIX) or key == OPEN_CLIP_PREFIX + "text_projection":
            continue
        match = re.match(re.escape(OPEN_CLIP_BLOCKS) + r"(\d+)\.", key)
        if match and int(match.group(1)) >= kept_blocks:
            continue
        kept[key] = value
    return kept


# --------------------------------------------------------------------------------------------------
# Prediction type
# --------------------------------------------------------------------------------------------------

V_WORDS = {"v", "v_prediction", "v-prediction", "vpred", "v_pred"}
EPSILON_WORDS = {"epsilon", "eps"}


def prediction_from_file(path: Path, keys: Any, metadata: dict[str, str]) -> tuple[str, str] | None:
    """(prediction type, reason) when the file or its companion .yaml says which; None when it does not."""
    if "v_pred" in keys:
        return "v_prediction", "the file carries a `v_pred` marker tensor"
    stated = (metadata.get("modelspec.prediction_type") or metadata.get("prediction_type") or "").strip().lower()
    if stated in V_WORDS:
        return "v_prediction", f"its metadata says prediction_type={stated}"
    if stated in EPSILON_WORDS:
        return "epsilon", f"its metadata says prediction_type={stated}"
    architecture = metadata.get("modelspec.architecture", "")
    if architecture.startswith("stable-diffusion-v2"):
        if architecture.endswith("-v"):
            return "v_prediction", f"its metadata says architecture={architecture}"
        return "epsilon", f"its metadata says architecture={architecture}"
    yaml_path = path.with_suffix(".yaml")
    if yaml_path.is_file():  # AUTOMATIC1111's convention: an LDM config beside the model decides
        text = yaml_path.read_text(encoding="utf-8", errors="replace")
        if re.search(r"^\s*parameterization:\s*[\"']?v[\"']?\s*$", text, re.MULTILINE):
            return "v_prediction", f"{yaml_path.name} says parameterization: v"
        return "epsilon", f"{yaml_path.name} sets no v parameterization"
    return None


def unet_predicts_v(unet: Any) -> tuple[bool, float]:
    """AUTOMATIC1111's test for SD 2.x (modules/sd_models_config.py, is_using_v_parameterization_for_sd2).

    At the last timestep a flat grey latent is almost pure noise: an epsilon model returns about the
    input, a v model (v = alpha * noise - sigma * x0) returns something far below it.
    """
    import torch

    latents = torch.full((1, unet.config.in_channels, 8, 8), 0.5)
    conditioning = torch.full((1, 2, unet.config.cross_attention_dim), 0.5)
    with torch.no_grad():
        output = unet(latents, torch.tensor([999]), encoder_hidden_states=conditioning).sample
    score = (output - latents).mean().item()
    return score < -1, score


def decide_prediction(family: str, requested: str, from_file: tuple[str, str] | None, unet: Any) -> tuple[str, str]:
    if requested in ("epsilon", "v_prediction"):
        return requested, "set in the answers file"
    if requested != "auto":
        raise ValueError(f"prediction must be auto, epsilon or v_prediction, not {requested!r}")
    if from_file is not None:
        return from_file
    if family == "sd1":
        return "epsilon", "SD 1.x models predict noise"
    is_v, score = unet_predicts_v(unet)
    verdict = "below" if is_v else "not below"
    return ("v_prediction" if is_v else "epsilon"), f"AUTOMATIC1111's UNet test: mean(output - input) = {score:.2f}, {verdict} -1"


# --------------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------------


def is_tokenizer_folder(folder: Path) -> bool:
    return folder.is_dir() and (
        ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()) or (folder / "tokenizer.json").is_file()
    )


def hugging_face_cache_dir() -> Path:
    """The hub cache, read from the environment now (huggingface_hub reads it once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hugging_face_offline() -> bool:
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return any(flag.strip().lower() in {"1", "true", "yes", "on"} for flag in flags)


def _cached_tokenizer(family: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    repo, subfolder = HF_TOKENIZERS[family]
    vocab_name = f"{subfolder}/vocab.json" if subfolder else "vocab.json"
    found = try_to_load_from_cache(repo, vocab_name, cache_dir=hugging_face_cache_dir())
    if isinstance(found, str) and is_tokenizer_folder(Path(found).parent):
        return Path(found).parent
    return None


def _download_tokenizer(family: str) -> Path | None:
    """Fetch the family's tokenizer (a few files, no weights) into the Hugging Face cache."""
    from huggingface_hub import snapshot_download

    repo, subfolder = HF_TOKENIZERS[family]
    patterns = [f"{subfolder}/{name}" if subfolder else name for name in TOKENIZER_FILES]
    folder = Path(snapshot_download(repo, allow_patterns=patterns, cache_dir=hugging_face_cache_dir(), etag_timeout=10))
    folder = folder / subfolder if subfolder else folder
    return folder if is_tokenizer_folder(folder) else None


@dataclass
class TokenizerSearch:
    folder: Path | None
    looked: list[str]  # every place tried, with what was found there


def find_tokenizer(path: Path, family: str, tokenizer_dir: Path | None) -> TokenizerSearch:
    """Where the tokenizer of a single-file model is: given, beside it, in the HF cache, or fetched once."""
    if tokenizer_dir is not None:
        for candidate in (tokenizer_dir, tokenizer_dir / "tokenizer"):
            if is_tokenizer_folder(candidate):
                return TokenizerSearch(candidate, [f"{candidate} (from the answers file)"])
        raise ModelFileError(
            "this tokenizer folder holds no CLIP tokenizer (vocab.json and merges.txt)",
            where=tokenizer_dir,
            fix="point `[model] tokenizer` at a folder with vocab.json and merges.txt (a diffusers model's `tokenizer/` folder)",
        )
    looked = []
    for candidate in (path.parent / "tokenizer", path.parent / path.stem / "tokenizer"):
        if is_tokenizer_folder(candidate):
            return TokenizerSearch(candidate, looked + [f"{candidate} (found)"])
        looked.append(f"{candidate} (no vocab.json + merges.txt)")
    repo, subfolder = HF_TOKENIZERS[family]
    where = f"{repo}{'/' + subfolder if subfolder else ''}"
    cached = _cached_tokenizer(family)
    if cached is not None:
        return TokenizerSearch(cached, looked + [f"{cached} (Hugging Face cache)"])
    looked.append(f"the Hugging Face cache {hugging_face_cache_dir()} ({where}: not there)")
    if hugging_face_offline():
        looked.append(f"download of {where}: not tried, HF_HUB_OFFLINE is set")
    elif where in _FAILED_DOWNLOADS:
        looked.append(f"download of {where}: failed earlier ({_FAILED_DOWNLOADS[where]})")
    else:
        try:
            downloaded = _download_tokenizer(family)
        except Exception as exc:  # any network or hub failure: report it among the places looked
            _FAILED_DOWNLOADS[where] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
            looked.append(f"download of {where}: failed ({_FAILED_DOWNLOADS[where]})")
        else:
            if downloaded is not None:
                return TokenizerSearch(downloaded, looked + [f"{downloaded} (downloaded into the Hugging Face cache)"])
            looked.append(f"download of {where}: it has no tokenizer files")
    return TokenizerSearch(None, looked)


def missing_tokenizer_error(path: Path, family: str, search: TokenizerSearch) -> ModelFileError:
    repo, _ = HF_TOKENIZERS[family]
    places = "\n".join(f"    - {place}" for place in search.looked)
    return ModelFileError(
        f"no tokenizer for this model (a single file carries none); looked in:\n{places}",
        where=path,
        fix=(
            f'add `tokenizer = "/path/to/tokenizer"` under [model] in the answers file, or copy a tokenizer folder '
            f"(vocab.json, merges.txt) to {path.parent / 'tokenizer'}, or run once with internet access to cache {repo}"
        ),
    )


def load_tokenizer(folder: Path, text_encoder_vocab: int, path: Path) -> Any:
    from transformers import CLIPTokenizer

    # CLIPTokenizer(vocab_file=...) ignores its files in transformers 5; from_pretrained(folder) works.
    try:
        tokenizer = CLIPTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"cannot load the tokenizer: {exc}", where=folder, fix="give a complete tokenizer folder") from None
    if len(tokenizer) > text_encoder_vocab:
        raise ModelFileError(
            f"the tokenizer has {len(tokenizer)} tokens but the model's text encoder knows only {text_encoder_vocab}",
            where=folder,
            fix=f"use the tokenizer that belongs to {path.name}",
        )
    return tokenizer


# --------------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------------


def load_single_file(path: Path, *, prediction: str = "auto", tokenizer_dir: Path | None = None) -> LoadedModel:
    """Load an SD 1.x / 2.x / SDXL single-file checkpoint offline, ready to train."""
    from engine.families.sd import FAMILIES

    path = Path(path)
    tensors, metadata, architecture = read_checkpoint(path)
    if architecture.family == "sdxl":
        from engine.families.sdxl_file import load_sdxl_single_file

        return load_sdxl_single_file(path, tensors, metadata, architecture, prediction=prediction, tokenizer_dir=tokenizer_dir)
    family = FAMILIES[architecture.family]
    search = find_tokenizer(path, architecture.family, tokenizer_dir)
    if search.folder is None:
        raise missing_tokenizer_error(path, architecture.family, search)

    unet = build_unet(architecture.unet, tensors, path)
    vae = build_vae(architecture.vae, tensors, path)
    text_encoder = build_text_encoder(architecture.family, architecture.text_encoder, tensors, path)
    tokenizer = load_tokenizer(search.folder, architecture.text_encoder["vocab_size"], path)
    file_note = single_file_note(family.label, path, tensors)
    from_file = prediction_from_file(path, tensors.keys(), metadata)
    del tensors

    prediction_type, reason = decide_prediction(architecture.family, prediction, from_file, unet)
    notes = [file_note, f"{prediction_type} prediction: {reason}", f"tokenizer from {search.folder}"]
    return LoadedModel(
        family=family,
        denoiser=unet,
        vae=vae,
        text_encoders=[text_encoder],
        tokenizers=[tokenizer],
        objective=NoisePrediction(template_scheduler(architecture.family, prediction_type), prediction_type),
        source=path,
        notes=notes,
    )


def single_file_note(label: str, path: Path, tensors: dict[str, Any]) -> str:
    """What was loaded, for the plan: `SD 1.x single file model.safetensors (weights stored as float16, ...)`."""
    stored = sorted({str(value.dtype).removeprefix("torch.") for value in tensors.values() if value.is_floating_point()})
    return f"{label} single file {path.name} (weights stored as {'/'.join(stored)}, loaded as float32)"


def template_scheduler(family: str, prediction_type: str) -> Any:
    """The family's published DDPM training scheduler (a single file carries none), set to `prediction_type`."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(load_template(family, "scheduler"), prediction_type=prediction_type)


def inspect_base_model(path: Path, tokenizer: Path | None = None) -> ModelInfo:
    """What a base model is, cheaply: a safetensors header or a diffusers folder's configs, no weights.

    A single file's tokenizer is looked up as loading would (and, online, fetched once into the Hugging
    Face cache: a few small files), so a plan that passes here does not fail later for want of one."""
    path = Path(path)
    if path.is_dir():
        return _inspect_diffusers_folder(path)
    _check_single_file_path(path)
    if path.suffix.lower() == ".safetensors":
        shapes, metadata = read_safetensors_shapes(path)
    else:  # memory-mapped: the tensors are not read, only their shapes
        shapes, metadata = {key: tuple(value.shape) for key, value in read_pickle_checkpoint(path, mmap=True).items()}, {}
    shapes = normalize_ldm_keys(shapes)
    architecture = derive_architecture(shapes, path)
    if architecture.family == "sdxl":
        return _inspect_sdxl_file(path, shapes, metadata, tokenizer)
    from_file = prediction_from_file(path, shapes.keys(), metadata)
    if from_file is not None:
        prediction, reason = from_file
    elif architecture.family == "sd1":
        prediction, reason = "epsilon", "SD 1.x models predict noise"
    else:
        prediction, reason = "unknown", "decided when loading, by AUTOMATIC1111's UNet test"
    search = find_tokenizer(path, architecture.family, Path(tokenizer) if tokenizer else None)
    tokenizer_note = search.looked[-1] if search.folder else "not found; looked in: " + "; ".join(search.looked)
    return _model_info(architecture.family, "single file", prediction, reason, search.folder, tokenizer_note, path)


def _inspect_sdxl_file(path: Path, shapes: dict[str, tuple[int, ...]], metadata: dict[str, str], tokenizer: Path | None) -> ModelInfo:
    from engine.families.sdxl_file import find_sdxl_tokenizers, sdxl_prediction

    prediction, reason = sdxl_prediction(path, shapes.keys(), metadata)
    search = find_sdxl_tokenizers(path, Path(tokenizer) if tokenizer else None)
    return _model_info("sdxl", "single file", prediction, reason, search.first.folder, search.note, path)


def _inspect_diffusers_folder(path: Path) -> ModelInfo:
    from engine.families.sd import check_diffusers_folder, family_from_unet_config

    family = family_from_unet_config(check_diffusers_folder(path), path)
    scheduler_config = path / "scheduler" / "scheduler_config.json"
    try:
        prediction = json.loads(scheduler_config.read_text(encoding="utf-8")).get("prediction_type", "epsilon")
        reason = "from scheduler/scheduler_config.json"
    except (OSError, ValueError):
        prediction, reason = "unknown", "scheduler/scheduler_config.json is missing or unreadable"
    tokenizer = path / "tokenizer"
    if not is_tokenizer_folder(tokenizer):
        raise ModelFileError("the `tokenizer` folder holds no vocab.json + merges.txt", where=tokenizer, fix="copy the complete model folder")
    note = "the model's own tokenizer/ and tokenizer_2/ folders" if family.name == "sdxl" else "the model's own tokenizer/ folder"
    return _model_info(family.name, "diffusers folder", prediction, reason, tokenizer, note, path)


def _model_info(family: str, layout: str, prediction: str, reason: str, tokenizer: Path | None, tokenizer_note: str, path: Path) -> ModelInfo:
    from engine.families.sd import FAMILIES

    return ModelInfo(
        family=family,
        label=FAMILIES[family].label,
        layout=layout,
        prediction=prediction,
        prediction_reason=reason,
        tokenizer=tokenizer,
        tokenizer_note=tokenizer_note,
        source=path,
    )
