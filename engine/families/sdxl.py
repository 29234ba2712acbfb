"""Stable Diffusion XL: two CLIP text encoders, size conditioning, kohya's SGM-named LoRA keys.

Conditioning, as diffusers' StableDiffusionXLPipeline and kohya's sdxl_train_util compute it:

- the UNet's context is the penultimate hidden states of both encoders (CLIP ViT-L, 768 wide, and
  OpenCLIP ViT-bigG, 1280 wide) side by side, without the final layer norm; clip skip N takes the
  (N+1)-th last layer instead (N = 1 is SDXL's own penultimate layer);
- the UNet's extra embedding gets the second encoder's pooled, projected output (`text_embeds`) and
  six numbers per image (`time_ids`): original height and width, crop top and left, target height
  and width, taken from how the training image was sized and cropped into its bucket.

LoRA keys: `lora_unet_<SGM module path>` (engine/families/sgm_names.py), `lora_te1_text_model_...`
(CLIP-L) and `lora_te2_text_model_...` (OpenCLIP bigG).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import ModelFileError
from engine.families.base import ImageGeometry, LoadedModel, ModelFamily
from engine.families.sgm_names import sdxl_block_table, sgm_module_path

if TYPE_CHECKING:
    import torch

# The block layout every SDXL-architecture UNet has (Pony, Illustrious, NoobAI included): kohya's
# SGM names only exist for it.
SDXL_DOWN_BLOCKS = ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
SDXL_UP_BLOCKS = ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")
SDXL_LAYERS_PER_BLOCK = 2
# SDXL's tokenizer_2 is CLIP's BPE tokenizer that pads with "!" (id 0), as OpenCLIP does.
OPEN_CLIP_PAD_TOKEN = "!"


class StableDiffusionXL(ModelFamily):
    name = "sdxl"
    label = "SDXL"
    base_model_version = "sdxl_base_v1-0"
    modelspec_architecture = "stable-diffusion-xl-v1-base/lora"
    default_resolution = 1024
    text_encoder_prefixes = ("lora_te1", "lora_te2")

    def encode(self, model: LoadedModel, token_ids: list[torch.Tensor], clip_skip: int = 1) -> dict[str, Any]:
        import torch

        from engine.devices import host_to_device

        first, second = model.text_encoders
        layer = -(clip_skip + 1)  # SDXL conditions on the penultimate layer; clip skip goes further back
        first_out = first(host_to_device(token_ids[0], _device_of(first)), output_hidden_states=True, return_dict=True)
        second_out = second(host_to_device(token_ids[1], _device_of(second)), output_hidden_states=True, return_dict=True)
        hidden = torch.cat([first_out.hidden_states[layer], second_out.hidden_states[layer]], dim=-1)
        return {"encoder_hidden_states": hidden, "text_embeds": second_out.text_embeds}

    def predict(
        self,
        model: LoadedModel,
        noisy_latents: torch.Tensor,
        timesteps: torch.Tensor,
        conditioning: dict[str, Any],
        geometry: list[ImageGeometry] | None = None,
    ) -> torch.Tensor:
        text_embeds = conditioning["text_embeds"]
        if geometry is None:  # no image behind these latents: condition on their own size, uncropped
            side = 2 ** (len(model.vae.config.block_out_channels) - 1)
            size = (noisy_latents.shape[-1] * side, noisy_latents.shape[-2] * side)
            geometry = [ImageGeometry(size, (0, 0), size)] * noisy_latents.shape[0]
        from engine.devices import host_to_device

        # float32 whatever the training precision: sizes above 2048 are not whole numbers in fp16 (the
        # UNet computes the sinusoid embedding in float32 anyway, as kohya does).
        added = {"text_embeds": text_embeds, "time_ids": host_to_device(time_ids(geometry), text_embeds.device)}
        return model.denoiser(
            noisy_latents, timesteps, encoder_hidden_states=conditioning["encoder_hidden_states"], added_cond_kwargs=added, return_dict=False
        )[0]

    def kohya_unet_name(self, module_path: str) -> str:
        return "lora_unet_" + sgm_module_path(module_path, sdxl_block_table()).replace(".", "_")

    def kohya_text_encoder_name(self, index: int, module_path: str) -> str:
        # transformers 5: CLIPTextModel (te1) has no `text_model.` level, CLIPTextModelWithProjection (te2)
        # keeps it; kohya spells both `text_model_encoder_layers_...`.
        path = module_path.removeprefix("text_model.")
        return f"{self.text_encoder_prefixes[index]}_text_model_" + path.replace(".", "_")


SDXL = StableDiffusionXL()


def time_ids(geometry: list[ImageGeometry]) -> torch.Tensor:
    """SDXL's size conditioning, one row per image: original (h, w), crop (top, left), target (h, w)."""
    import torch

    rows = [
        [g.original[1], g.original[0], g.crop_top_left[0], g.crop_top_left[1], g.target[1], g.target[0]] for g in geometry
    ]
    return torch.tensor(rows, dtype=torch.float32)


def _device_of(module: Any) -> torch.device:
    return next(module.parameters()).device


# --------------------------------------------------------------------------------------------------
# What loading checks (the loaders are in diffusers_folder.py and sdxl_file.py)
# --------------------------------------------------------------------------------------------------


def is_sdxl_unet_config(config: Mapping[str, Any]) -> bool:
    return config.get("addition_embed_type") == "text_time"


def check_sdxl_layout(config: Mapping[str, Any], where: Path) -> None:
    """An SDXL-base-shaped UNet: text_time embeddings, three levels, attention in the last two, two layers a block."""
    layout = (tuple(config.get("down_block_types", ())), tuple(config.get("up_block_types", ())), config.get("layers_per_block"))
    if not is_sdxl_unet_config(config) or layout != (SDXL_DOWN_BLOCKS, SDXL_UP_BLOCKS, SDXL_LAYERS_PER_BLOCK):
        raise ModelFileError(
            "this model has SDXL parts but its UNet is not laid out like SDXL's base model (an SDXL refiner or another architecture)",
            where=where,
            fix="give an SDXL base model or a model built on it (Pony, Illustrious, NoobAI...)",
        )


def sdxl_second_tokenizer(first: Any) -> Any:
    """SDXL's tokenizer_2 made from its tokenizer: the same BPE vocabulary, padded with "!" as OpenCLIP pads."""
    import copy

    second = copy.deepcopy(first)
    second.pad_token = OPEN_CLIP_PAD_TOKEN
    return second
