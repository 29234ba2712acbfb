"""Images from a FLUX.1 model: diffusers' FluxPipeline on the model's own modules.

The prompt is encoded as training encodes it (engine/families/flux.py), the pipeline runs the flow
sampler with the model's scheduler (FLUX.1's FlowMatchEulerDiscreteScheduler, dynamic shift for dev)
and returns packed latents, which are unpacked, un-shifted and decoded here on the VAE's own device.

kohya-format FLUX.1 LoRAs load through `pipeline.load_lora_weights` as diffusers' state dicts: the
fused BFL modules are split back onto diffusers' separate layers with the same table that wrote them
(engine/families/flux_layout.py). diffusers' own kohya converter would do this only at FLUX.1's full
width (it hard-codes 3072 and 12288), and the tiny test model must take the same path as the real one.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from engine.families.flux_layout import KOHYA_TRANSFORMER_PREFIX, bfl_place

if TYPE_CHECKING:
    import torch

    from engine.families.base import LoadedModel


def build_flux_pipeline(model: LoadedModel) -> Any:
    from accelerate.utils import extract_model_from_parallel
    from diffusers import FluxPipeline

    clip, t5 = (extract_model_from_parallel(encoder) for encoder in model.text_encoders)
    pipeline = FluxPipeline(
        scheduler=copy.deepcopy(model.objective.scheduler),
        vae=model.vae,
        text_encoder=clip,
        tokenizer=model.tokenizers[0],
        text_encoder_2=t5,
        tokenizer_2=model.tokenizers[1],
        transformer=extract_model_from_parallel(model.denoiser),
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def pipeline_embeds(encoded: dict[str, Any], dtype: Any) -> dict[str, Any]:
    """FluxPipeline's prompt arguments from the family's encoding of a prompt (FLUX.1 has no negative prompt)."""
    return {
        "prompt_embeds": encoded["encoder_hidden_states"].to(dtype),
        "pooled_prompt_embeds": encoded["pooled_projections"].to(dtype),
    }


def decode(pipeline: Any, latents: torch.Tensor, width: int, height: int) -> list[Any]:
    """PIL images from the pipeline's packed latents."""
    vae = pipeline.vae
    parameter = next(vae.parameters())
    latents = pipeline._unpack_latents(latents, height, width, pipeline.vae_scale_factor)
    latents = (
        latents.to(device=parameter.device, dtype=parameter.dtype) / vae.config.scaling_factor
        + vae.config.shift_factor
    )
    pixels = vae.decode(latents, return_dict=False)[0]
    return pipeline.image_processor.postprocess(pixels.float(), output_type="pil")


def stem_table(transformer: Any, clip: Any | None) -> dict[str, list[tuple[int, str]]]:
    """kohya stem -> [(part, `transformer.<path>` or `text_encoder.<path>`)] for every Linear that a
    kohya FLUX.1 LoRA can name: the transformer's (by their BFL modules) and CLIP-L's."""
    from torch import nn

    from engine.families.flux_lora import clip_l_stem

    table: dict[str, list[tuple[int, str]]] = {}
    for path, module in transformer.named_modules():
        place = bfl_place(path) if isinstance(module, nn.Linear) else None
        if place is not None:
            stem = f"{KOHYA_TRANSFORMER_PREFIX}_{place.module.replace('.', '_')}"
            table.setdefault(stem, []).append((place.part, "transformer." + path))
    for path, module in clip.named_modules() if clip is not None else []:
        if isinstance(module, nn.Linear):
            table[clip_l_stem(path)] = [(0, "text_encoder." + path)]
    return {stem: sorted(parts) for stem, parts in table.items()}


def kohya_to_diffusers(
    tensors: dict[str, torch.Tensor], transformer: Any, clip: Any | None = None
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """A kohya FLUX.1 LoRA as diffusers/peft tensors (`<module>.lora_A.weight`, `.lora_B.weight`, scale
    folded into lora_B), and the stems that name no module of this model."""
    table = stem_table(transformer, clip)
    converted: dict[str, torch.Tensor] = {}
    unmatched = []
    for stem in sorted({key.split(".")[0] for key in tensors}):
        modules = table.get(stem)
        down, up = tensors.get(f"{stem}.lora_down.weight"), tensors.get(f"{stem}.lora_up.weight")
        if modules is None or down is None or up is None:
            unmatched.append(stem)
            continue
        rank = down.shape[0]
        alpha = float(tensors[f"{stem}.alpha"]) if f"{stem}.alpha" in tensors else rank
        up = up.float() * (alpha / rank)
        pieces = _split(down.float(), up, [_rows(transformer, path) for _, path in modules])
        for (_, path), (part_down, part_up) in zip(modules, pieces, strict=True):
            converted[f"{path}.lora_A.weight"] = part_down.contiguous()
            converted[f"{path}.lora_B.weight"] = part_up.contiguous()
    return converted, unmatched


def _rows(transformer: Any, path: str) -> int | None:
    if not path.startswith("transformer."):
        return None
    return transformer.get_submodule(path.removeprefix("transformer.")).out_features


def _split(
    down: torch.Tensor, up: torch.Tensor, rows: list[int | None]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each part's (down, up): its own diagonal block when `up` is block-diagonal (as this tool and
    kohya's converter write fused modules), else the whole down and its rows of up (still exact)."""
    if len(rows) == 1:
        return [(down, up)]
    count, rank = len(rows), down.shape[0]
    sizes = [int(r) for r in rows]
    if rank % count == 0:
        block = rank // count
        blocks, start, diagonal = [], 0, True
        for index, size in enumerate(sizes):
            part_up = up[start : start + size]
            outside = part_up.clone()
            outside[:, index * block : (index + 1) * block] = 0
            diagonal = diagonal and not outside.any()
            blocks.append(
                (down[index * block : (index + 1) * block], part_up[:, index * block : (index + 1) * block])
            )
            start += size
        if diagonal:
            return blocks
    parts, start = [], 0
    for size in sizes:
        parts.append((down, up[start : start + size]))
        start += size
    return parts
