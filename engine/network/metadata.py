"""kohya's `ss_*` and `modelspec.*` metadata, sd-scripts' hashes, and writing the network file.

`ss_network_module`, `ss_network_dim`, `ss_network_alpha` and `ss_network_args` are written as
kohya's networks.lora (lora, locon) or the lycoris package (`lycoris.kohya`, with `algo` in the
args: loha, lokr and DoRA) write them.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import UserError
from engine.files import atomic_write_bytes
from engine.network.types import KOHYA_LORA_MODULE, kohya_network_args, kohya_network_module

if TYPE_CHECKING:
    import torch

    from engine.config import Answers
    from engine.families import LoadedModel

# kohya's ss_optimizer is the optimizer class's `module.name`.
KOHYA_OPTIMIZER_NAMES = {
    "adamw": "torch.optim.adamw.AdamW",
    "adamw8bit": "bitsandbytes.optim.adamw.AdamW8bit",
    "prodigy": "prodigyopt.prodigy.Prodigy",
}
# modelspec.implementation as sd-scripts' sai_model_spec writes it for a LoRA.
MODELSPEC_IMPLEMENTATION_SGM = "https://github.com/Stability-AI/generative-models"
MODELSPEC_IMPLEMENTATION_DIFFUSERS = "diffusers"

# Legacy hash window of sd-webui-additional-networks: 64 KiB at offset 1 MiB.
LEGACY_HASH_OFFSET = 0x100000
LEGACY_HASH_LENGTH = 0x10000


def kohya_metadata(*, model: LoadedModel, answers: Answers, stats: dict[str, Any]) -> dict[str, str]:
    """kohya's `ss_*` training metadata and the `modelspec.*` keys, as sd-scripts' train_network.py writes them.

    Values are strings formatted as kohya does (`str()` of the Python value: "True", "None", "0.0001",
    "(512, 512)"; JSON for the dataset tables). `stats` carries what only the run knows:

    - started_at: float, epoch seconds when training started (ss_training_started_at)
    - finished_at: float or None, epoch seconds of this save; None = now (ss_training_finished_at, modelspec.date)
    - steps: optimizer steps done; epoch: epochs done (ss_steps, ss_epoch)
    - max_train_steps: planned optimizer steps (ss_max_train_steps; ss_num_epochs is derived from it as kohya does)
    - num_train_images: training images times repeats; num_reg_images: regularization images used
    - num_batches_per_epoch: batches in one epoch, before gradient accumulation
    - resolution: int, training size in pixels (ss_resolution "(512, 512)", modelspec.resolution "512x512")
    - dataset_dirs / reg_dataset_dirs: {"10_usu bear": {"n_repeats": 10, "img_count": 4}}
    - tag_frequency: {"10_usu bear": {"usu bear": 4}}
    - session_id: int, random id of this run (ss_session_id)
    - mixed_precision: "no", "fp16" or "bf16", as actually used
    """
    training = answers.training
    network = answers.network
    finished_at = stats["finished_at"] if stats["finished_at"] is not None else time.time()
    resolution = int(stats["resolution"])
    updates_per_epoch = max(1, math.ceil(stats["num_batches_per_epoch"] / training.gradient_accumulation))
    kohya_values: dict[str, Any] = {
        "ss_session_id": stats["session_id"],
        "ss_training_started_at": stats["started_at"],
        "ss_output_name": answers.output.name,
        "ss_learning_rate": training.unet_lr,  # kohya's base learning rate; the UNet uses it
        "ss_text_encoder_lr": training.text_encoder_lr,
        "ss_unet_lr": training.unet_lr,
        "ss_num_train_images": stats["num_train_images"],
        "ss_num_reg_images": stats["num_reg_images"],
        "ss_num_batches_per_epoch": stats["num_batches_per_epoch"],
        "ss_num_epochs": math.ceil(stats["max_train_steps"] / updates_per_epoch),
        "ss_gradient_checkpointing": training.gradient_checkpointing,
        "ss_gradient_accumulation_steps": training.gradient_accumulation,
        "ss_max_train_steps": stats["max_train_steps"],
        "ss_lr_warmup_steps": training.warmup_steps,
        "ss_lr_scheduler": training.lr_scheduler,
        "ss_network_module": _network_module(model, network),
        "ss_network_dim": network.dim,
        "ss_network_alpha": network.effective_alpha,
        "ss_network_dropout": network.dropout or None,  # kohya's network_dropout; None when off
        "ss_network_args": json.dumps(kohya_network_args(network)),
        "ss_mixed_precision": stats["mixed_precision"],
        "ss_full_fp16": False,  # LoRA weights train in float32
        "ss_v2": model.family.name == "sd2",
        "ss_base_model_version": _base_model_version(model),
        "ss_clip_skip": training.clip_skip,
        "ss_max_token_length": None,  # kohya's None: one 75-token chunk
        "ss_cache_latents": training.cache_latents != "off",
        "ss_seed": training.seed,
        "ss_noise_offset": training.noise_offset or None,  # kohya writes None when it is off
        "ss_min_snr_gamma": training.min_snr_gamma,
        "ss_max_grad_norm": training.max_grad_norm,
        "ss_optimizer": KOHYA_OPTIMIZER_NAMES[training.optimizer],
        "ss_prior_loss_weight": answers.dataset.prior_loss_weight,
        "ss_batch_size_per_device": training.batch_size,
        "ss_total_batch_size": training.batch_size * training.gradient_accumulation,  # one process
        "ss_resolution": (resolution, resolution),
        "ss_dataset_dirs": json.dumps(stats["dataset_dirs"]),
        "ss_reg_dataset_dirs": json.dumps(stats["reg_dataset_dirs"]),
        "ss_tag_frequency": json.dumps(stats["tag_frequency"]),
        "ss_sd_model_name": Path(answers.model.path).name,
        **({"ss_vae_name": Path(answers.model.vae).name} if answers.model.vae else {}),  # kohya's, with --vae
        "ss_training_finished_at": finished_at,
        "ss_steps": stats["steps"],
        "ss_epoch": stats["epoch"],
    }
    metadata = {key: str(value) for key, value in kohya_values.items()}
    metadata.update(model.family.lora_metadata(answers))
    metadata.update(_modelspec(model, answers, resolution=resolution, saved_at=finished_at))
    return metadata


def _network_module(model: LoadedModel, network: Any) -> str:
    """kohya's own module of the family (networks.lora, networks.lora_flux) for lora and locon,
    lycoris.kohya for LoHa, LoKr and DoRA."""
    module = kohya_network_module(network.type, network.dora)
    return model.family.network_module if module == KOHYA_LORA_MODULE else module


def _is_v2_v_prediction(model: LoadedModel) -> bool:
    return model.family.name == "sd2" and model.objective.prediction_type == "v_prediction"


def _base_model_version(model: LoadedModel) -> str:
    # kohya tells SD 2.x v-prediction (768-v) apart from SD 2.x epsilon (512-base).
    return "sd_v2_v" if _is_v2_v_prediction(model) else model.family.base_model_version


def _modelspec(model: LoadedModel, answers: Answers, *, resolution: int, saved_at: float) -> dict[str, str]:
    """The `modelspec.*` keys as sd-scripts' library/sai_model_spec.py writes them for a LoRA."""
    architecture = model.family.modelspec_architecture
    if _is_v2_v_prediction(model):
        architecture = "stable-diffusion-v2-768-v/lora"
    sgm = model.family.name == "sdxl"  # kohya names SDXL LoRAs after the SGM implementation
    spec = {
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": architecture,
        "modelspec.implementation": MODELSPEC_IMPLEMENTATION_SGM if sgm else MODELSPEC_IMPLEMENTATION_DIFFUSERS,
        "modelspec.title": answers.output.name,
        "modelspec.resolution": f"{resolution}x{resolution}",
        "modelspec.date": datetime.datetime.fromtimestamp(int(saved_at)).isoformat(),
        "modelspec.prediction_type": "v" if model.objective.prediction_type == "v_prediction" else "epsilon",
        "modelspec.implementation_version": f"lora-wizard/{_own_version()}",
    }
    if model.family.modelspec_implementation:  # FLUX.1: BFL's implementation, and no prediction type (kohya's)
        spec["modelspec.implementation"] = model.family.modelspec_implementation
        del spec["modelspec.prediction_type"]
    if answers.training.clip_skip > 1:
        spec["modelspec.encoder_layer"] = str(answers.training.clip_skip)
    return spec


def _own_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lora-wizard")
    except PackageNotFoundError:
        return "unknown"


# --- hashes and the file itself --------------------------------------------------------------------


def safetensors_hashes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> tuple[str, str]:
    """(sshs_model_hash, sshs_legacy_hash) as sd-scripts' precalculate_safetensors_hashes computes them.

    Both are taken on a serialization that carries only the `ss_*` metadata, so editing other
    metadata later does not change them: the model hash is the sha256 of everything after the
    header, the legacy hash the first 8 hex digits of the sha256 of the 64 KiB at offset 1 MiB.
    """
    from safetensors.torch import save

    training_metadata = {key: value for key, value in metadata.items() if key.startswith("ss_")}
    data = save(tensors, training_metadata)
    header_length = int.from_bytes(data[:8], "little")
    model_hash = hashlib.sha256(data[8 + header_length :]).hexdigest()
    legacy_hash = hashlib.sha256(data[LEGACY_HASH_OFFSET : LEGACY_HASH_OFFSET + LEGACY_HASH_LENGTH]).hexdigest()[:8]
    return model_hash, legacy_hash


def save_lora_file(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str], *, overwrite: bool = False) -> Path:
    """Write a kohya-format LoRA atomically, with sd-scripts' `sshs_*` hashes added to `metadata`.

    An existing file is kept (UserError) unless `overwrite`.
    """
    from safetensors.torch import save

    path = Path(path)
    if path.exists() and not overwrite:
        raise UserError(
            "a LoRA file of this name already exists",
            where=path,
            fix="set `[output] overwrite = true` in the answers file, or choose another `[output] name`",
        )
    model_hash, legacy_hash = safetensors_hashes(tensors, metadata)
    full_metadata = {**metadata, "sshs_model_hash": model_hash, "sshs_legacy_hash": legacy_hash}
    atomic_write_bytes(path, save(tensors, full_metadata))
    return path
