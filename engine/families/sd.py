"""Stable Diffusion 1.x and 2.x: one CLIP text encoder, cross-attention on its hidden states."""

from __future__ import annotations

from typing import Any

from engine.families.base import LoadedModel, ModelFamily


class StableDiffusion1(ModelFamily):
    name = "sd1"
    label = "SD 1.x"
    base_model_version = "sd_v1"
    modelspec_architecture = "stable-diffusion-v1/lora"
    default_resolution = 512

    def encode(self, model: LoadedModel, token_ids: list[Any], clip_skip: int = 1) -> dict[str, Any]:
        from engine.devices import host_to_device

        text_encoder = model.text_encoders[0]
        ids = host_to_device(token_ids[0], text_encoder.device)
        if clip_skip == 1:
            hidden = text_encoder(ids, return_dict=False)[0]
        else:
            # kohya / AUTOMATIC1111 clip skip: the N-th last layer, then the final layer norm.
            states = text_encoder(ids, output_hidden_states=True, return_dict=True).hidden_states
            hidden = text_encoder.final_layer_norm(states[-clip_skip])
        return {"encoder_hidden_states": hidden}

    def kohya_unet_name(self, module_path: str) -> str:
        # SD 1.x/2.x kohya keys spell the diffusers module path with underscores.
        return "lora_unet_" + module_path.replace(".", "_")

    def kohya_text_encoder_name(self, index: int, module_path: str) -> str:
        # transformers 5 dropped the `text_model.` wrapper; kohya and the web UIs only map the old spelling.
        path = module_path.removeprefix("text_model.")
        return "lora_te_text_model_" + path.replace(".", "_")


class StableDiffusion2(StableDiffusion1):
    name = "sd2"
    label = "SD 2.x"
    base_model_version = "sd_v2"
    modelspec_architecture = "stable-diffusion-v2-512/lora"
    default_resolution = 512


SD1 = StableDiffusion1()
SD2 = StableDiffusion2()
