"""The bench's SD 1.5-shaped model and dataset, built offline and cached on disk.

Every part keeps SD 1.5's architecture at 1/8 of its width, so relative costs stay SD-like:

    UNet          SD 1.5's layout (4 levels, cross-attention in the first three, 2 layers per block,
                  1x1-conv proj_in/proj_out), channels 40/80/160/160 (SD: 320/640/1280/1280),
                  SD's 40-wide attention heads and 10 channels per norm group: about 13.6M parameters
    VAE           SD's VAE (4 levels, 2 layers per block, 8x down-sampling), channels 18/36/72/72
                  (SD: 128/256/512/512): encoding a 256 px image costs 0.63 of a LoRA step, as SD 1.5's
                  VAE costs 0.65 of its LoRA step at 512 px (bench/flops.py counts both the same way)
    text encoder  CLIP, hidden 128, 2 layers: 1.5% of a UNet forward (SD 1.5: 1.6%)

Images are 256 px (32x32 latents). Tokens shrink 4x and channels 8x against SD 1.5 at 512 px, so
attention's products are a larger share of the forward's FLOPs: 28%, against 16% for SD 1.5.
`QUICK` is a much smaller model for the smoke test.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.tiny import SD_SCHEDULER_CONFIG, write_synthetic_dataset

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_CACHE = BENCH_DIR / ".cache"
SD15_CONFIGS = BENCH_DIR.parent / "engine" / "families" / "configs" / "sd15"
INSTANCE = "usu bear"


@dataclass(frozen=True)
class BenchModelSpec:
    """The sizes of a bench model; its hash names its cache folder."""

    unet_channels: tuple[int, ...] = (40, 80, 160, 160)
    unet_heads: tuple[int, ...] = (1, 2, 4, 4)  # SD 1.5's heads are 40 wide: 8 at 320 channels
    unet_norm_groups: int = 4  # SD 1.5: 320 channels / 32 groups = 10 per group
    cross_attention_dim: int = 128
    vae_channels: tuple[int, ...] = (18, 36, 72, 72)
    vae_norm_groups: int = 6
    text_hidden: int = 128
    text_layers: int = 2
    resolution: int = 256
    images: int = 8
    lora_dim: int = 8

    def key(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


FULL = BenchModelSpec()
QUICK = BenchModelSpec(
    unet_channels=(16, 16, 32, 32), unet_heads=(1, 1, 2, 2), cross_attention_dim=32,
    vae_channels=(8, 8, 16, 16), vae_norm_groups=4, text_hidden=32, resolution=64, images=4, lora_dim=4,
)


def unet_config(spec: BenchModelSpec) -> dict[str, Any]:
    return dict(
        sample_size=spec.resolution // 8,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=spec.unet_channels,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=spec.cross_attention_dim,
        attention_head_dim=spec.unet_heads,  # diffusers' SD 1.x name for the number of heads
        norm_num_groups=spec.unet_norm_groups,
        use_linear_projection=False,
    )


def vae_config(spec: BenchModelSpec) -> dict[str, Any]:
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=spec.vae_channels,
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=spec.vae_norm_groups,
        sample_size=spec.resolution,
        scaling_factor=0.18215,
    )


def text_encoder_config(spec: BenchModelSpec, vocab_size: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=spec.text_hidden,
        intermediate_size=spec.text_hidden * 4,  # CLIP's MLP ratio
        num_hidden_layers=spec.text_layers,
        num_attention_heads=max(1, spec.text_hidden // 32),
        max_position_embeddings=77,
        projection_dim=spec.text_hidden,
        hidden_act="quick_gelu",
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )


def save_pipeline(folder: Path, unet, vae, text_encoder, tokenizer_dir: Path) -> None:
    """Write the parts as a diffusers folder, the layout `load_base_model` reads."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    pipeline = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=CLIPTokenizer.from_pretrained(tokenizer_dir), unet=unet,
        scheduler=DDPMScheduler(**SD_SCHEDULER_CONFIG), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(folder, safe_serialization=True)


def _build_into(folder: Path, spec: BenchModelSpec) -> None:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from engine.tiny import write_tiny_tokenizer

    tokenizer_dir = write_tiny_tokenizer(folder / "tokenizer")
    vocab_size = len(CLIPTokenizer.from_pretrained(tokenizer_dir))
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**unet_config(spec))
    vae = AutoencoderKL(**vae_config(spec))
    text_encoder = CLIPTextModel(text_encoder_config(spec, vocab_size))
    save_pipeline(folder, unet, vae, text_encoder, tokenizer_dir)
    write_synthetic_dataset(folder / "data", instance=INSTANCE, repeats=10, images=spec.images, reg_images=0, size=spec.resolution)


@dataclass
class BenchModel:
    """A built bench model: its diffusers folder, its training root and its spec."""

    spec: BenchModelSpec
    model_dir: Path
    train_dir: Path
    notes: list[str] = field(default_factory=list)


def bench_model(spec: BenchModelSpec = FULL, cache: Path = DEFAULT_CACHE) -> BenchModel:
    """The model and dataset for `spec`, built on first use (a few seconds) and reused after."""
    root = cache / f"model-{spec.key()}"
    if not (root / "model_index.json").is_file():
        cache.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix="building-", dir=cache))
        try:
            _build_into(staging, spec)
            shutil.rmtree(root, ignore_errors=True)
            staging.rename(root)  # atomic: a half-built model is never reused
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return BenchModel(spec=spec, model_dir=root, train_dir=root / "data" / "train")


def answers_data(model: BenchModel, output_dir: Path, **overrides: dict[str, Any]) -> dict[str, Any]:
    """An answers mapping for the bench model: frozen text encoder, cached latents, batch 1.

    `overrides` update sections, e.g. training={"cache_latents": "off"}."""
    data: dict[str, Any] = {
        "model": {"path": str(model.model_dir)},
        "dataset": {"train_dir": str(model.train_dir), "resolution": model.spec.resolution},
        "network": {"dim": model.spec.lora_dim, "alpha": model.spec.lora_dim, "train_text_encoder": False},
        "training": {"max_steps": 100_000, "batch_size": 1, "seed": 0, "mixed_precision": "auto"},
        "checkpoints": {"every_epoch": False},
        "output": {"dir": str(output_dir), "name": "bench", "overwrite": True},
    }
    for section, values in overrides.items():
        data.setdefault(section, {}).update(values)
    return data
