"""Tiny Stable-Diffusion-shaped models, built offline in seconds, for the demo and the tests.

The tiny SD 1.x UNet keeps SD 1.5's layout exactly (four levels, cross-attention in the first
three, two layers per block, 1x1-conv proj_in/proj_out), only narrower, so its LoRA key names are
the real SD 1.5 names. The text encoder is shallow; the tokenizer is a real CLIP BPE tokenizer with
a small vocabulary. Nothing here downloads anything.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

# The loaders derive this for narrow UNets too (the rule lives with them): group norms of 4 channels.
from engine.families.ldm_config import TINY_UNET_NORM_GROUPS

# Words the tiny tokenizer knows as single tokens; anything else splits into characters.
TINY_WORDS = [
    "a", "photo", "of", "the", "usu", "bear", "shs", "dog", "cat", "person", "toy", "in", "on",
    "with", "and", "red", "blue", "green", "white", "black", "background", "picture", "style",
]
CLIP_MAX_LENGTH = 77


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte-level alphabet: every byte gets a printable character."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + n)
            n += 1
    return dict(zip(printable, (chr(c) for c in codes), strict=True))


def write_tiny_tokenizer(folder: Path, words: list[str] = TINY_WORDS) -> Path:
    """Write a CLIP BPE tokenizer (vocab.json, merges.txt) and return its folder."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    alphabet = list(_bytes_to_unicode().values())
    vocab_tokens = alphabet + [c + "</w>" for c in alphabet]
    merges: list[str] = []
    byte_encoder = _bytes_to_unicode()
    for word in words:
        symbols = [byte_encoder[b] for b in word.encode("utf-8")]
        symbols[-1] += "</w>"
        current = symbols[0]
        for symbol in symbols[1:]:
            merge = f"{current} {symbol}"
            current += symbol
            if merge not in merges:
                merges.append(merge)
                vocab_tokens.append(current)
    vocab_tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(vocab_tokens))}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    # Round-trip through transformers so the folder also carries its tokenizer_config.json.
    tokenizer = CLIPTokenizer.from_pretrained(folder, model_max_length=CLIP_MAX_LENGTH)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_text_encoder_config(vocab_size: int, hidden: int = 32, layers: int = 2, projection_dim: int = 32):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=CLIP_MAX_LENGTH,
        projection_dim=projection_dim,
        hidden_act="quick_gelu",
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )



def tiny_sd1_unet_config(cross_attention_dim: int = 32) -> dict:
    """SD 1.5's UNet layout at 1/10 of the width."""
    return dict(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(32, 32, 64, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=TINY_UNET_NORM_GROUPS,
        use_linear_projection=False,
    )


def tiny_vae_config() -> dict:
    """SD's VAE layout (four levels, 8x down-sampling, 4 latent channels) at reduced width."""
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 32, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=64,
        scaling_factor=0.18215,
    )


SD_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    steps_offset=1,
    prediction_type="epsilon",
)


def build_tiny_sd1_pipeline(folder: Path, *, seed: int = 0) -> Path:
    """Build a tiny SD 1.x-shaped model with random weights and save it as a diffusers folder."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = Path(folder)
    tokenizer_dir = write_tiny_tokenizer(folder / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(tiny_text_encoder_config(len(tokenizer)))
    unet = UNet2DConditionModel(**tiny_sd1_unet_config())
    vae = AutoencoderKL(**tiny_vae_config())
    scheduler = DDPMScheduler(**SD_SCHEDULER_CONFIG)
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(folder, safe_serialization=True)
    return folder


def write_synthetic_dataset(
    root: Path,
    *,
    instance: str = "usu bear",
    class_word: str = "bear",
    repeats: int = 10,
    images: int = 4,
    reg_images: int = 8,
    size: int = 64,
    seed: int = 0,
) -> tuple[Path, Path]:
    """A small kohya-style dataset: `train/<repeats>_<instance>/` and `reg/1_<class>/` of PNGs.

    Instance images are a distinctive pattern (a red disc on blue); class images vary in colour,
    so a LoRA that learns the instance is visible in the loss.
    """
    import random

    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    train_dir = root / "train"
    reg_dir = root / "reg"
    concept = train_dir / f"{repeats}_{instance}"
    reg_concept = reg_dir / f"1_{class_word}"
    concept.mkdir(parents=True, exist_ok=True)
    reg_concept.mkdir(parents=True, exist_ok=True)
    for i in range(images):
        image = Image.new("RGB", (size, size), (30, 60, 200))
        draw = ImageDraw.Draw(image)
        r = size // 4 + rng.randint(-2, 2)
        cx, cy = size // 2 + rng.randint(-6, 6), size // 2 + rng.randint(-6, 6)
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(220, 30, 30))
        image.save(concept / f"{i:03d}.png")
    for i in range(reg_images):
        colour = tuple(rng.randint(0, 255) for _ in range(3))
        image = Image.new("RGB", (size, size), colour)
        draw = ImageDraw.Draw(image)
        x0, y0 = rng.randint(0, size // 2), rng.randint(0, size // 2)
        draw.rectangle((x0, y0, x0 + size // 3, y0 + size // 3), fill=tuple(255 - c for c in colour))
        image.save(reg_concept / f"{i:03d}.png")
    return train_dir, reg_dir


# --------------------------------------------------------------------------------------------------
# Single-file (original CompVis/LDM layout) versions of the tiny models, as AUTOMATIC1111 users have them.
# The mapping follows diffusers' scripts/convert_diffusers_to_original_stable_diffusion.py, generalised
# to any number of levels and layers so the tiny models convert too.
# --------------------------------------------------------------------------------------------------

_UNET_TOP_LEVEL = {
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "conv_in.": "input_blocks.0.0.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
}
_UNET_RESNET_PARTS = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_VAE_ATTENTION_PARTS = {"group_norm.": "norm.", "to_q.": "q.", "to_k.": "k.", "to_v.": "v.", "to_out.0.": "proj_out."}


def _unet_block_prefixes(config: dict) -> dict[str, str]:
    """diffusers module prefix -> LDM prefix, for a UNet of any depth (SD's has 4 levels, 2 layers each)."""
    layers = config["layers_per_block"]
    levels = len(config["block_out_channels"])
    prefixes = dict(_UNET_TOP_LEVEL)
    for level in range(levels):
        for layer in range(layers):
            ldm = 1 + level * (layers + 1) + layer
            prefixes[f"down_blocks.{level}.resnets.{layer}."] = f"input_blocks.{ldm}.0."
            prefixes[f"down_blocks.{level}.attentions.{layer}."] = f"input_blocks.{ldm}.1."
        if level < levels - 1:
            prefixes[f"down_blocks.{level}.downsamplers.0.conv."] = f"input_blocks.{(level + 1) * (layers + 1)}.0.op."
        up_has_attention = config["up_block_types"][level].startswith("CrossAttn")
        for layer in range(layers + 1):
            ldm = level * (layers + 1) + layer
            prefixes[f"up_blocks.{level}.resnets.{layer}."] = f"output_blocks.{ldm}.0."
            prefixes[f"up_blocks.{level}.attentions.{layer}."] = f"output_blocks.{ldm}.1."
        if level < levels - 1:
            last = level * (layers + 1) + layers
            prefixes[f"up_blocks.{level}.upsamplers.0."] = f"output_blocks.{last}.{2 if up_has_attention else 1}."
    prefixes["mid_block.resnets.0."] = "middle_block.0."
    prefixes["mid_block.attentions.0."] = "middle_block.1."
    prefixes["mid_block.resnets.1."] = "middle_block.2."
    return prefixes


def _rename_by_prefix(key: str, prefixes: dict[str, str]) -> tuple[str, str]:
    """(LDM prefix, rest of the key) for the longest diffusers prefix that `key` starts with."""
    matches = [prefix for prefix in prefixes if key.startswith(prefix)]
    if not matches:
        raise KeyError(f"no LDM name for {key}")
    prefix = max(matches, key=len)
    return prefixes[prefix], key[len(prefix) :]


def unet_to_ldm(state_dict: dict, config: dict) -> dict:
    prefixes = _unet_block_prefixes(config)
    converted = {}
    for key, value in state_dict.items():
        ldm_prefix, rest = _rename_by_prefix(key, prefixes)
        if ".resnets." in key:
            first, _, tail = rest.partition(".")
            rest = f"{_UNET_RESNET_PARTS.get(first, first)}.{tail}"
        converted["model.diffusion_model." + ldm_prefix + rest] = value
    return converted


def _vae_prefixes(config: dict) -> dict[str, str]:
    levels = len(config["block_out_channels"])
    prefixes = {"encoder.conv_norm_out.": "encoder.norm_out.", "decoder.conv_norm_out.": "decoder.norm_out."}
    for level in range(levels):
        prefixes[f"encoder.down_blocks.{level}.resnets."] = f"encoder.down.{level}.block."
        prefixes[f"encoder.down_blocks.{level}.downsamplers.0."] = f"encoder.down.{level}.downsample."
        # LDM numbers the decoder's levels from the bottom, diffusers from the top.
        prefixes[f"decoder.up_blocks.{level}.resnets."] = f"decoder.up.{levels - 1 - level}.block."
        prefixes[f"decoder.up_blocks.{level}.upsamplers.0."] = f"decoder.up.{levels - 1 - level}.upsample."
    for part in ("encoder", "decoder"):
        for index in range(2):
            prefixes[f"{part}.mid_block.resnets.{index}."] = f"{part}.mid.block_{index + 1}."
        prefixes[f"{part}.mid_block.attentions.0."] = f"{part}.mid.attn_1."
    return prefixes


def vae_to_ldm(state_dict: dict, config: dict) -> dict:
    prefixes = _vae_prefixes(config)
    converted = {}
    for key, value in state_dict.items():
        try:
            ldm_prefix, rest = _rename_by_prefix(key, prefixes)
        except KeyError:  # conv_in, conv_out, quant_conv, post_quant_conv keep their names
            ldm_prefix, rest = "", key
        rest = rest.replace("conv_shortcut", "nin_shortcut")
        if ldm_prefix.endswith("mid.attn_1."):
            for diffusers_part, ldm_part in _VAE_ATTENTION_PARTS.items():
                if rest.startswith(diffusers_part):
                    rest = ldm_part + rest[len(diffusers_part) :]
            if rest.endswith(".weight") and value.ndim == 2:
                value = value.reshape(*value.shape, 1, 1)  # LDM's attention uses 1x1 convolutions
        converted["first_stage_model." + ldm_prefix + rest] = value
    return converted


def clip_to_ldm(state_dict: dict) -> dict:
    """SD 1.x keeps transformers' CLIPTextModel names under `cond_stage_model.transformer.text_model.`."""
    # transformers 5 dropped the `text_model.` level from CLIPTextModel; the LDM names keep it.
    return {"cond_stage_model.transformer.text_model." + key.removeprefix("text_model."): value for key, value in state_dict.items()}


_OPEN_CLIP_PARTS = {
    "layer_norm1.": "ln_1.",
    "layer_norm2.": "ln_2.",
    "mlp.fc1.": "mlp.c_fc.",
    "mlp.fc2.": "mlp.c_proj.",
    "self_attn.out_proj.": "attn.out_proj.",
}


def clip_to_open_clip(state_dict: dict, text_projection) -> dict:
    """SD 2.x's OpenCLIP layout (`cond_stage_model.model.`): q/k/v fused into one in_proj per block."""
    import torch

    prefix = "cond_stage_model.model."
    converted = {prefix + "text_projection": text_projection}
    fused: dict[str, dict[str, object]] = {}
    for key, value in state_dict.items():
        key = key.removeprefix("text_model.")
        if key == "embeddings.token_embedding.weight":
            converted[prefix + "token_embedding.weight"] = value
        elif key == "embeddings.position_embedding.weight":
            converted[prefix + "positional_embedding"] = value
        elif key.startswith("final_layer_norm."):
            converted[prefix + "ln_final." + key.removeprefix("final_layer_norm.")] = value
        elif match := re.match(r"encoder\.layers\.(\d+)\.(.*)", key):
            block, rest = f"{prefix}transformer.resblocks.{match.group(1)}.", match.group(2)
            if attention := re.match(r"self_attn\.([qkv])_proj\.(weight|bias)", rest):
                fused.setdefault(f"{block}attn.in_proj_{attention.group(2)}", {})[attention.group(1)] = value
                continue
            for diffusers_part, ldm_part in _OPEN_CLIP_PARTS.items():
                rest = rest.replace(diffusers_part, ldm_part)
            converted[block + rest] = value
        elif key != "embeddings.position_ids":
            raise KeyError(f"no OpenCLIP name for {key}")
    for key, parts in fused.items():
        converted[key] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return converted


def save_single_file(state_dict: dict, out_path: Path, metadata: dict[str, str] | None = None) -> Path:
    """Write an LDM state dict as .safetensors, or as .ckpt / .pt (torch.save of {"state_dict": ...})."""
    import torch
    from safetensors.torch import save_file

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {key: value.detach().contiguous() for key, value in state_dict.items()}
    if out_path.suffix.lower() == ".safetensors":
        save_file(tensors, str(out_path), metadata=metadata)
    else:
        torch.save({"state_dict": tensors}, out_path)
    return out_path


def write_tiny_single_file(diffusers_folder: Path, out_path: Path) -> Path:
    """Convert a tiny SD 1.x diffusers folder (build_tiny_sd1_pipeline) to one LDM-layout file.

    `.safetensors` or `.ckpt` by the extension of `out_path`; the tokenizer is not part of the file.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    folder = Path(diffusers_folder)
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", local_files_only=True)
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", local_files_only=True)
    text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", local_files_only=True)
    state_dict = {
        **unet_to_ldm(unet.state_dict(), dict(unet.config)),
        **vae_to_ldm(vae.state_dict(), dict(vae.config)),
        **clip_to_ldm(text_encoder.state_dict()),
    }
    return save_single_file(state_dict, out_path)


def tiny_sd2_models(vocab_size: int, *, seed: int = 0):
    """A tiny SD 2.x-shaped UNet (linear projections, head count growing with width), VAE and a text
    encoder with one block more than SD 2.x uses (it conditions on OpenCLIP's penultimate layer)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    text_config = tiny_text_encoder_config(vocab_size, layers=3)
    text_config.hidden_act = "gelu"
    text_encoder = CLIPTextModel(text_config)
    unet_config = tiny_sd1_unet_config(cross_attention_dim=text_config.hidden_size)
    # SD 2.x's heads are 64 wide; below one such head the tiny models use 8-wide heads.
    heads = [width // 64 if width % 64 == 0 else width // 8 for width in unet_config["block_out_channels"]]
    unet_config.update(use_linear_projection=True, attention_head_dim=heads)
    unet = UNet2DConditionModel(**unet_config)
    vae = AutoencoderKL(**tiny_vae_config())
    return unet, vae, text_encoder


def write_tiny_sd2_single_file(out_path: Path, *, seed: int = 0, metadata: dict[str, str] | None = None):
    """A tiny SD 2.x-layout single file with its tokenizer beside it (`tokenizer/`).

    Returns (path, unet, vae, text_encoder): the diffusers models it was written from, for comparisons.
    """
    import torch
    from transformers import CLIPTokenizer

    out_path = Path(out_path)
    tokenizer = CLIPTokenizer.from_pretrained(write_tiny_tokenizer(out_path.parent / "tokenizer"))
    unet, vae, text_encoder = tiny_sd2_models(len(tokenizer), seed=seed)
    hidden = text_encoder.config.hidden_size
    state_dict = {
        **unet_to_ldm(unet.state_dict(), dict(unet.config)),
        **vae_to_ldm(vae.state_dict(), dict(vae.config)),
        **clip_to_open_clip(text_encoder.state_dict(), torch.randn(hidden, hidden)),
    }
    return save_single_file(state_dict, out_path, metadata), unet, vae, text_encoder
