"""A tiny SDXL-shaped model for the demo and the tests: SDXL's block layout, two text encoders of
different widths, size conditioning; as a diffusers folder, or as one file in the original (SGM)
layout. Built offline in seconds from engine/tiny.py's parts; nothing here downloads anything.
"""

from __future__ import annotations

from pathlib import Path

from engine.families.ldm_config import TINY_UNET_NORM_GROUPS
from engine.tiny import (
    clip_to_open_clip,
    save_single_file,
    tiny_text_encoder_config,
    tiny_vae_config,
    vae_to_ldm,
    write_tiny_tokenizer,
)

TINY_SDXL_TEXT_WIDTHS = (32, 48)  # stand-ins for CLIP ViT-L (768) and OpenCLIP bigG (1280): different widths
TINY_SDXL_TIME_EMBED_DIM = 8  # SDXL: 256 sinusoid dimensions per size number
OPEN_CLIP_PAD_TOKEN = "!"  # SDXL's tokenizer_2 pads with "!" (id 0), as OpenCLIP does


def tiny_sdxl_unet_config(text_widths: tuple[int, int] = TINY_SDXL_TEXT_WIDTHS) -> dict:
    """SDXL's UNet layout, narrow: three levels (32, 48, 64 for 320, 640, 1280), a plain first level,
    attention in the last two, two layers per block, transformer depth (1, 1, 2) for SDXL's (1, 2, 10),
    linear proj_in/proj_out, `text_time` embeddings of the pooled second encoder."""
    widths = (32, 48, 64)
    pooled = text_widths[1]  # the second encoder's projection is as wide as the encoder, as in SDXL
    return dict(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=widths,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2),
        cross_attention_dim=sum(text_widths),
        # SDXL's heads are 64 wide; below one such head the tiny models use 8-wide heads.
        attention_head_dim=[width // 64 if width % 64 == 0 else width // 8 for width in widths],
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=TINY_SDXL_TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=pooled + 6 * TINY_SDXL_TIME_EMBED_DIM,
        norm_num_groups=TINY_UNET_NORM_GROUPS,
    )


def tiny_sdxl_models(vocab_size: int, *, seed: int = 0):
    """(unet, vae, text_encoder, text_encoder_2) of the tiny SDXL shape, random weights."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    first_width, second_width = TINY_SDXL_TEXT_WIDTHS
    first = CLIPTextModel(tiny_text_encoder_config(vocab_size, hidden=first_width, layers=3))
    second_config = tiny_text_encoder_config(vocab_size, hidden=second_width, layers=3, projection_dim=second_width)
    second_config.num_attention_heads = second_width // 8
    second_config.hidden_act = "gelu"  # OpenCLIP's activation; CLIP ViT-L uses quick_gelu
    second = CLIPTextModelWithProjection(second_config)
    unet = UNet2DConditionModel(**tiny_sdxl_unet_config())
    vae = AutoencoderKL(**{**tiny_vae_config(), "scaling_factor": 0.13025, "force_upcast": True})
    return unet, vae, first, second


def write_tiny_sdxl_tokenizers(folder: Path) -> tuple[Path, Path]:
    """`tokenizer/` and `tokenizer_2/` in `folder`: the tiny CLIP tokenizer, the second padding with "!"."""
    from transformers import CLIPTokenizer

    first = write_tiny_tokenizer(Path(folder) / "tokenizer")
    second = Path(folder) / "tokenizer_2"
    CLIPTokenizer.from_pretrained(first, pad_token=OPEN_CLIP_PAD_TOKEN).save_pretrained(second)
    return first, second


def build_tiny_sdxl_pipeline(folder: Path, *, seed: int = 0) -> Path:
    """Build a tiny SDXL-shaped model with random weights and save it as a diffusers folder."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTokenizer

    from engine.families.templates import load_template

    folder = Path(folder)
    first_dir, second_dir = write_tiny_sdxl_tokenizers(folder)
    tokenizer, tokenizer_2 = CLIPTokenizer.from_pretrained(first_dir), CLIPTokenizer.from_pretrained(second_dir)
    unet, vae, text_encoder, text_encoder_2 = tiny_sdxl_models(len(tokenizer), seed=seed)
    pipeline = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=EulerDiscreteScheduler.from_config(load_template("sdxl", "scheduler")),
        add_watermarker=False,
    )
    pipeline.save_pretrained(folder, safe_serialization=True)
    return folder


SGM_FIRST_TEXT_PREFIX = "conditioner.embedders.0.transformer.text_model."  # CLIP ViT-L, transformers' names
SGM_SECOND_TEXT_PREFIX = "conditioner.embedders.1.model."  # OpenCLIP bigG, its own names


def sdxl_to_sgm(unet, vae, text_encoder, text_encoder_2) -> dict:
    """The state dict of an SDXL model in the original (SGM) single-file layout."""
    import torch

    from engine.families.sgm_names import sgm_state_dict

    second = dict(text_encoder_2.state_dict())
    projection = second.pop("text_projection.weight").T.contiguous()  # OpenCLIP multiplies x @ P
    open_clip = {
        SGM_SECOND_TEXT_PREFIX + key.removeprefix("cond_stage_model.model."): value
        for key, value in clip_to_open_clip(second, projection).items()
    }
    return {
        **{"model.diffusion_model." + key: value for key, value in sgm_state_dict(unet.state_dict(), dict(unet.config)).items()},
        **vae_to_ldm(vae.state_dict(), dict(vae.config)),
        **{SGM_FIRST_TEXT_PREFIX + key.removeprefix("text_model."): value for key, value in text_encoder.state_dict().items()},
        **open_clip,
        SGM_SECOND_TEXT_PREFIX + "logit_scale": torch.tensor(4.6052),  # in real files; unused for generation
    }


def write_tiny_sdxl_single_file(diffusers_folder: Path, out_path: Path, *, with_tokenizers: bool = True) -> Path:
    """Convert a tiny SDXL diffusers folder (build_tiny_sdxl_pipeline) to one SGM-layout file.

    `.safetensors` or `.ckpt` by the extension of `out_path`. The tokenizers are not part of the file;
    `with_tokenizers` copies them beside it (`tokenizer/`, `tokenizer_2/`), where loading looks first.
    """
    import shutil

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    folder = Path(diffusers_folder)
    out_path = Path(out_path)
    models = (
        UNet2DConditionModel.from_pretrained(folder, subfolder="unet", local_files_only=True),
        AutoencoderKL.from_pretrained(folder, subfolder="vae", local_files_only=True),
        CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", local_files_only=True),
        CLIPTextModelWithProjection.from_pretrained(folder, subfolder="text_encoder_2", local_files_only=True),
    )
    written = save_single_file(sdxl_to_sgm(*models), out_path)
    if with_tokenizers:
        for part in ("tokenizer", "tokenizer_2"):
            shutil.copytree(folder / part, out_path.parent / part, dirs_exist_ok=True)
    return written
