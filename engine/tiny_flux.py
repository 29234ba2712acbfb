"""A tiny FLUX.1-shaped model, built offline in seconds, in the file layouts users have.

FLUX.1's layout at a small width: double blocks then single blocks, 64-channel packed latents from
a 16-channel VAE with FLUX's shift and scale, a CLIP text encoder for the pooled vector and a T5
encoder for the sequence, FLUX's rotary axes in FLUX's proportions (head 32: axes 4, 14, 14). Its
tokenizers are real: the repo's small CLIP BPE tokenizer and a T5 Unigram tokenizer built here.

Two layouts, as users have FLUX.1:
- kohya's four single files: the transformer in BFL's layout (`flux1-dev.safetensors` or
  `flux1-schnell.safetensors`), `ae.safetensors` (the VAE, LDM names), `clip_l.safetensors`
  (transformers' CLIPTextModel names) and `t5xxl_fp16.safetensors` (T5EncoderModel names), with
  `tokenizer/` and `tokenizer_2/` beside them;
- a diffusers folder (FluxPipeline.save_pretrained).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.families.flux_layout import diffusers_to_bfl, rope_axes
from engine.families.flux_load import SCHEDULER_CONFIGS, T5_MAX_LENGTH
from engine.tiny import (
    TINY_WORDS,
    save_single_file,
    tiny_text_encoder_config,
    tiny_vae_config,
    vae_to_ldm,
    write_tiny_tokenizer,
)

TINY_FLUX_WIDTH = 64  # 2 heads of 32 (FLUX.1: 24 heads of 128)
TINY_FLUX_HEAD = 32
TINY_T5_WIDTH = 32  # T5-XXL: 4096
TINY_CLIP_WIDTH = 32  # CLIP-L: 768
TRANSFORMER_FILE = {"dev": "flux1-dev.safetensors", "schnell": "flux1-schnell.safetensors"}
VAE_FILE = "ae.safetensors"
CLIP_FILE = "clip_l.safetensors"
T5_FILE = "t5xxl_fp16.safetensors"


def tiny_flux_transformer(*, variant: str = "dev", seed: int = 0) -> Any:
    import torch
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=1,
        num_single_layers=2,
        attention_head_dim=TINY_FLUX_HEAD,
        num_attention_heads=TINY_FLUX_WIDTH // TINY_FLUX_HEAD,
        joint_attention_dim=TINY_T5_WIDTH,
        pooled_projection_dim=TINY_CLIP_WIDTH,
        guidance_embeds=variant == "dev",
        axes_dims_rope=rope_axes(TINY_FLUX_HEAD),
    )


def tiny_flux_vae(*, seed: int = 0) -> Any:
    """FLUX.1's autoencoder layout (four levels, 16 latent channels, no quant convs) at reduced width."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(**{
        **tiny_vae_config(),
        "latent_channels": 16,
        "scaling_factor": 0.3611,
        "shift_factor": 0.1159,
        "use_quant_conv": False,
        "use_post_quant_conv": False,
    })


def write_tiny_t5_tokenizer(folder: Path, words: list[str] = TINY_WORDS) -> Path:
    """A T5 (Unigram) tokenizer knowing `words` and single letters, saved with save_pretrained."""
    import string

    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(f"▁{word}", -1.0) for word in words]
    pieces += [(letter, -5.0) for letter in string.ascii_lowercase + string.digits + ",.-"]
    tokenizer = T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=T5_MAX_LENGTH["dev"])
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_t5_encoder(vocab_size: int, *, seed: int = 0, width: int = TINY_T5_WIDTH) -> Any:
    """T5 v1.1's encoder layout (gated GELU feed-forward, relative attention) at a small width."""
    import torch
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=vocab_size,
        d_model=width,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=32,
        feed_forward_proj="gated-gelu",
        is_encoder_decoder=False,
        use_cache=False,
    )
    return T5EncoderModel(config)


@dataclass
class TinyFlux:
    """The parts of a tiny FLUX.1 model, and the tokenizer folders they go with."""

    transformer: Any
    vae: Any
    clip: Any
    t5: Any
    tokenizer_dir: Path
    tokenizer_2_dir: Path
    variant: str


def tiny_flux_models(folder: Path, *, variant: str = "dev", seed: int = 0) -> TinyFlux:
    """Tokenizers written to `folder/tokenizer` and `folder/tokenizer_2`, and random-weight models for them."""
    from transformers import CLIPTextModel, CLIPTokenizer, T5Tokenizer

    clip_dir = write_tiny_tokenizer(Path(folder) / "tokenizer")
    t5_dir = write_tiny_t5_tokenizer(Path(folder) / "tokenizer_2")
    clip_vocab = len(CLIPTokenizer.from_pretrained(clip_dir))
    t5_vocab = len(T5Tokenizer.from_pretrained(t5_dir))
    import torch

    torch.manual_seed(seed)
    clip = CLIPTextModel(tiny_text_encoder_config(clip_vocab, hidden=TINY_CLIP_WIDTH))
    return TinyFlux(
        transformer=tiny_flux_transformer(variant=variant, seed=seed),
        vae=tiny_flux_vae(seed=seed),
        clip=clip,
        t5=tiny_t5_encoder(t5_vocab, seed=seed),
        tokenizer_dir=clip_dir,
        tokenizer_2_dir=t5_dir,
        variant=variant,
    )


@dataclass
class FluxFiles:
    """kohya's four FLUX.1 files (and the tokenizer folders beside them)."""

    transformer: Path
    vae: Path
    clip: Path
    t5: Path


def clip_l_state_dict(clip: Any) -> dict[str, Any]:
    """clip_l.safetensors as ComfyUI and kohya keep it: transformers' names with the `text_model.` level
    (transformers 5 dropped it from CLIPTextModel)."""
    return {
        "text_model." + key.removeprefix("text_model."): value for key, value in clip.state_dict().items()
    }


def t5_state_dict(t5: Any) -> dict[str, Any]:
    """t5xxl_fp16.safetensors: T5EncoderModel's names, the embedding once (as `shared.weight`)."""
    return {key: value for key, value in t5.state_dict().items() if key != "encoder.embed_tokens.weight"}


def ae_state_dict(vae: Any) -> dict[str, Any]:
    """ae.safetensors: the VAE in LDM names without the `first_stage_model.` prefix of full checkpoints."""
    return {
        key.removeprefix("first_stage_model."): value
        for key, value in vae_to_ldm(vae.state_dict(), dict(vae.config)).items()
    }


def write_flux_files(models: TinyFlux, folder: Path, *, transformer_dtype: Any = None) -> FluxFiles:
    """Write the four single files into `folder`; `transformer_dtype` (e.g. torch.float8_e4m3fn) as the
    fp8 transformer files users make."""
    folder = Path(folder)
    bfl = diffusers_to_bfl(models.transformer.state_dict())
    if transformer_dtype is not None:
        bfl = {key: value.to(transformer_dtype) for key, value in bfl.items()}
    return FluxFiles(
        transformer=save_single_file(bfl, folder / TRANSFORMER_FILE[models.variant]),
        vae=save_single_file(ae_state_dict(models.vae), folder / VAE_FILE),
        clip=save_single_file(clip_l_state_dict(models.clip), folder / CLIP_FILE),
        t5=save_single_file(t5_state_dict(models.t5), folder / T5_FILE),
    )


def write_tiny_flux_files(
    folder: Path, *, variant: str = "dev", seed: int = 0, transformer_dtype: Any = None
) -> FluxFiles:
    """A tiny FLUX.1 model as kohya's four files, with `tokenizer/` and `tokenizer_2/` beside them."""
    return write_flux_files(
        tiny_flux_models(folder, variant=variant, seed=seed), folder, transformer_dtype=transformer_dtype
    )


def build_tiny_flux_pipeline(folder: Path, *, variant: str = "dev", seed: int = 0) -> Path:
    """A tiny FLUX.1 model as a diffusers folder (FluxPipeline.save_pretrained)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
    from transformers import CLIPTokenizer, T5Tokenizer

    folder = Path(folder)
    models = tiny_flux_models(folder, variant=variant, seed=seed)
    pipeline = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIGS[variant]),
        vae=models.vae,
        text_encoder=models.clip,
        tokenizer=CLIPTokenizer.from_pretrained(models.tokenizer_dir),
        text_encoder_2=models.t5,
        tokenizer_2=T5Tokenizer.from_pretrained(models.tokenizer_2_dir),
        transformer=models.transformer,
    )
    pipeline.save_pretrained(folder, safe_serialization=True)
    return folder
