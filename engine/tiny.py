"""Tiny Stable-Diffusion-shaped models, built offline in seconds, for the demo and the tests.

The tiny SD 1.x UNet keeps SD 1.5's layout exactly (four levels, cross-attention in the first
three, two layers per block, 1x1-conv proj_in/proj_out), only narrower, so its LoRA key names are
the real SD 1.5 names. The text encoder is shallow; the tokenizer is a real CLIP BPE tokenizer with
a small vocabulary. Nothing here downloads anything.
"""

from __future__ import annotations

import json
from pathlib import Path

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
        norm_num_groups=32,
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
