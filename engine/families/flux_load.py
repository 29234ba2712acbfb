"""FLUX.1 parts from kohya's four single files, offline: each checked from its header first
(engine/families/flux_files.py), then built at the size its tensors say and loaded strictly.

- the transformer: BFL's layout (engine/families/flux_layout.py), bf16 or fp8 on disk; fp8 tensors are
  widened to the compute dtype here, and `fp8_base` (engine/families/flux_memory.py) narrows them again
  for storage with diffusers' layerwise casting;
- ae.safetensors: diffusers' own `convert_ldm_vae_checkpoint`, FLUX.1's autoencoder config (16 latent
  channels, shift 0.1159, scale 0.3611, no quant convs) sized by the file;
- clip_l.safetensors: transformers' CLIPTextModel names, with or without the `text_model.` level;
- t5xxl: T5EncoderModel names (T5 v1.1: gated GELU), the embedding as `shared.weight`.

The tokenizers are not in the files: `tokenizer/` (CLIP) and `tokenizer_2/` (T5) beside the
transformer file or in `[model] tokenizer`, or the Hugging Face cache's openai/clip-vit-large-patch14 and
google/t5-v1_1-xxl, as kohya uses them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from engine.errors import ModelFileError
from engine.families.flux_files import SLOTS, FluxFile, FluxFilesInfo, latent_channels
from engine.families.flux_layout import bfl_to_diffusers, strip_bfl_prefix, transformer_config

FLUX_SCALING_FACTOR = 0.3611
FLUX_SHIFT_FACTOR = 0.1159
# FLUX.1's scheduler configs (the models' scheduler/scheduler_config.json): dev shifts by resolution.
SCHEDULER_CONFIGS = {
    "dev": {
        "num_train_timesteps": 1000,
        "shift": 3.0,
        "use_dynamic_shifting": True,
        "base_shift": 0.5,
        "max_shift": 1.15,
        "base_image_seq_len": 256,
        "max_image_seq_len": 4096,
    },
    "schnell": {"num_train_timesteps": 1000, "shift": 1.0, "use_dynamic_shifting": False},
}
T5_MAX_LENGTH = {"dev": 512, "schnell": 256}  # kohya's t5xxl_max_token_length defaults
HF_TOKENIZERS = {
    "tokenizer": ("openai/clip-vit-large-patch14", "vocab.json"),
    "tokenizer_2": ("google/t5-v1_1-xxl", "tokenizer.json"),
}


def read_tensors(file: FluxFile, keys: list[str], dtype: Any) -> dict[str, Any]:
    """Tensors `keys` of a checked file, widened or narrowed to `dtype`."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(file.path, framework="pt") as handle:
            return {key: handle.get_tensor(key).to(dtype) for key in keys}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(
            f"cannot read this file's tensors, it is damaged ({str(exc).splitlines()[0][:200]})",
            where=file.path,
            fix="download the file again (compare its size with the model page)",
        ) from None


def _load_strictly(model: Any, state_dict: dict[str, Any], slot: str, path: Path) -> Any:
    try:
        model.load_state_dict(state_dict, strict=True, assign=True)
    except RuntimeError as exc:
        reason = " ".join(str(exc).split())[:300]
        raise ModelFileError(
            f"{SLOTS[slot].key}: the file does not fit the model its header describes ({reason})",
            where=path,
            fix=SLOTS[slot].fix,
        ) from None
    return model.eval()


def load_transformer(file: FluxFile, dtype: Any) -> Any:
    """FluxTransformer2DModel from a BFL-layout file (also under ComfyUI's `model.diffusion_model.`)."""
    from accelerate import init_empty_weights
    from diffusers import FluxTransformer2DModel

    names = strip_bfl_prefix(file.header.shapes)
    shapes = {bare: file.header.shapes[key] for bare, key in names.items()}
    config = transformer_config(shapes)
    with init_empty_weights():
        model = FluxTransformer2DModel(**config)
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    # Only the transformer's tensors: an all-in-one file also holds the VAE and text encoders.
    wanted = [key for bare, key in names.items() if bare.split(".")[0] in _BFL_TOP_LEVEL]
    tensors = read_tensors(file, wanted, dtype)
    bfl = {bare: tensors[key] for bare, key in names.items() if key in tensors}
    try:
        state = bfl_to_diffusers(bfl, expected)
    except (KeyError, ValueError) as exc:
        raise ModelFileError(
            f"`[model] path`: this FLUX.1 transformer is incomplete or damaged (tensor {exc})",
            where=file.path,
            fix=SLOTS["transformer"].fix,
        ) from None
    return _load_strictly(model, state, "transformer", file.path)


_BFL_TOP_LEVEL = {
    "double_blocks",
    "single_blocks",
    "img_in",
    "txt_in",
    "time_in",
    "vector_in",
    "guidance_in",
    "final_layer",
}


def _levels(shapes: dict[str, tuple[int, ...]], prefix: str) -> list[int]:
    return sorted({int(m.group(1)) for key in shapes if (m := re.match(re.escape(prefix) + r"(\d+)\.", key))})


def autoencoder_config(shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """FLUX.1's AutoencoderKL config, sized by an ae file's shapes (LDM names)."""
    levels = _levels(shapes, "encoder.down.")
    return {
        "in_channels": shapes["encoder.conv_in.weight"][1],
        "out_channels": shapes["decoder.conv_out.weight"][0],
        "down_block_types": ["DownEncoderBlock2D"] * len(levels),
        "up_block_types": ["UpDecoderBlock2D"] * len(levels),
        "block_out_channels": [shapes[f"encoder.down.{level}.block.0.conv2.weight"][0] for level in levels],
        "layers_per_block": len(_levels(shapes, "encoder.down.0.block.")),
        "latent_channels": latent_channels(shapes),
        "norm_num_groups": 32,
        "sample_size": 1024,
        "scaling_factor": FLUX_SCALING_FACTOR,
        "shift_factor": FLUX_SHIFT_FACTOR,
        "use_quant_conv": False,
        "use_post_quant_conv": False,
        "force_upcast": True,
        "mid_block_add_attention": True,
    }


def load_autoencoder(file: FluxFile, dtype: Any) -> Any:
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    shapes = file.header.shapes
    config = autoencoder_config(shapes)
    with init_empty_weights():
        vae = AutoencoderKL(**config)
    tensors = read_tensors(file, list(shapes), dtype)
    state = (
        tensors
        if any(key.startswith("encoder.down_blocks.") for key in tensors)
        else convert_ldm_vae_checkpoint(tensors, config)
    )
    return _load_strictly(vae, state, "ae", file.path)


def _count(shapes: dict[str, tuple[int, ...]], prefix: str) -> int:
    return len(_levels(shapes, prefix))


def clip_config(shapes: dict[str, tuple[int, ...]]) -> Any:
    """CLIP-L's CLIPTextConfig (quick GELU, 64-wide heads; this project's tiny models: 8-wide) sized by the file."""
    from transformers import CLIPTextConfig

    vocab, hidden = shapes["embeddings.token_embedding.weight"]
    head_width = 64 if hidden % 64 == 0 else 8
    return CLIPTextConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=shapes["encoder.layers.0.mlp.fc1.weight"][0],
        num_hidden_layers=_count(shapes, "encoder.layers."),
        num_attention_heads=hidden // head_width,
        max_position_embeddings=shapes["embeddings.position_embedding.weight"][0],
        projection_dim=hidden,
        hidden_act="quick_gelu",
        # CLIP-L's special tokens: <|startoftext|> and <|endoftext|> are the vocabulary's last two.
        bos_token_id=vocab - 2,
        eos_token_id=vocab - 1,
        pad_token_id=vocab - 1,
    )


def load_clip(file: FluxFile, dtype: Any) -> Any:
    from accelerate import init_empty_weights
    from transformers import CLIPTextModel

    # transformers 5's CLIPTextModel has no `text_model.` level; the files usually keep it.
    names = {
        key.removeprefix("text_model."): key for key in file.header.shapes if key != "text_projection.weight"
    }
    names.pop("embeddings.position_ids", None)
    shapes = {bare: file.header.shapes[key] for bare, key in names.items()}
    config = clip_config(shapes)
    with init_empty_weights():
        model = CLIPTextModel(config)
    tensors = read_tensors(file, list(names.values()), dtype)
    return _load_strictly(model, {bare: tensors[key] for bare, key in names.items()}, "clip_l", file.path)


def t5_config(shapes: dict[str, tuple[int, ...]]) -> Any:
    """T5 v1.1's encoder config (gated GELU) sized by the file."""
    from transformers import T5Config

    embedding = shapes.get("shared.weight") or shapes["encoder.embed_tokens.weight"]
    buckets, heads = shapes["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
    return T5Config(
        vocab_size=embedding[0],
        d_model=embedding[1],
        d_kv=shapes["encoder.block.0.layer.0.SelfAttention.q.weight"][0] // heads,
        d_ff=shapes["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"][0],
        num_layers=_count(shapes, "encoder.block."),
        num_heads=heads,
        relative_attention_num_buckets=buckets,
        feed_forward_proj="gated-gelu",
        is_encoder_decoder=False,
        use_cache=False,
    )


def load_t5(file: FluxFile, dtype: Any) -> Any:
    from accelerate import init_empty_weights
    from transformers import T5EncoderModel

    shapes = file.header.shapes
    with init_empty_weights():
        model = T5EncoderModel(t5_config(shapes))
    tensors = read_tensors(file, list(shapes), dtype)
    embedding = tensors.pop("shared.weight", None)
    embedding = tensors.pop("encoder.embed_tokens.weight", embedding)
    state = {**tensors, "shared.weight": embedding, "encoder.embed_tokens.weight": embedding}
    return _load_strictly(model, state, "t5xxl", file.path)


# --- tokenizers --------------------------------------------------------------------------------------


def _cached(repo: str, filename: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    from engine.families.tokenizers import hugging_face_cache_dir

    found = try_to_load_from_cache(repo, filename, cache_dir=hugging_face_cache_dir())
    return Path(found).parent if isinstance(found, str) else None


def find_flux_tokenizers(transformer: Path, tokenizer_dir: Path | None) -> tuple[Path, Path]:
    """(CLIP tokenizer folder, T5 tokenizer folder): in `[model] tokenizer`, beside the transformer
    file, or in the Hugging Face cache."""
    looked = []
    found: dict[str, Path] = {}
    for part, (repo, marker) in HF_TOKENIZERS.items():
        bases = [tokenizer_dir] if tokenizer_dir is not None else [transformer.parent]
        for base in bases:
            candidate = base / part
            if (candidate / marker).is_file() or (candidate / "tokenizer.json").is_file():
                found[part] = candidate
                break
            looked.append(f"{candidate} (no {marker})")
        if part not in found and tokenizer_dir is None:
            cached = _cached(repo, marker)
            if cached is not None:
                found[part] = cached
            else:
                looked.append(f"the Hugging Face cache ({repo}: not there)")
    if len(found) < 2:
        places = "\n".join(f"    - {place}" for place in looked)
        raise ModelFileError(
            f"no tokenizers for this FLUX.1 model (the files carry none); looked in:\n{places}",
            where=transformer,
            fix="copy the model's `tokenizer/` (CLIP) and `tokenizer_2/` (T5) folders beside the transformer file, "
            "or set `[model] tokenizer` to a folder holding both",
        )
    return found["tokenizer"], found["tokenizer_2"]


def load_tokenizers(clip_dir: Path, t5_dir: Path, variant: str) -> list[Any]:
    from transformers import CLIPTokenizer, T5Tokenizer

    try:
        clip = CLIPTokenizer.from_pretrained(clip_dir, local_files_only=True)
        t5 = T5Tokenizer.from_pretrained(
            t5_dir, local_files_only=True, model_max_length=T5_MAX_LENGTH[variant]
        )
    except (OSError, ValueError) as exc:
        raise ModelFileError(
            f"cannot load the tokenizers: {exc}", where=clip_dir.parent, fix="give complete tokenizer folders"
        ) from None
    return [clip, t5]


def scheduler_for(variant: str) -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIGS[variant])


def load_flux_parts(info: FluxFilesInfo, tokenizer_dir: Path | None, dtype: Any) -> dict[str, Any]:
    """Every part of a FLUX.1 model from checked files: transformer, vae, clip, t5, tokenizers, scheduler."""
    clip_dir, t5_dir = find_flux_tokenizers(info.transformer.path, tokenizer_dir)
    return {
        "transformer": load_transformer(info.transformer, dtype),
        "vae": load_autoencoder(info.ae, dtype),
        "clip": load_clip(info.clip_l, dtype),
        "t5": load_t5(info.t5xxl, dtype),
        "tokenizers": load_tokenizers(clip_dir, t5_dir, info.variant),
        "scheduler": scheduler_for(info.variant),
    }
