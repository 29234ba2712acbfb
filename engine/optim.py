"""The training's numerics set up from the answers: mixed precision, optimizer, learning-rate schedule."""

from __future__ import annotations

from engine.config import Answers
from engine.errors import UserError


def resolve_precision(requested: str, device_type: str, bf16_supported: bool) -> str:
    """`auto` becomes bf16 where supported, else fp16, and no on a CPU."""
    if device_type == "cpu":
        if requested == "fp16":
            raise UserError(
                "`training.mixed_precision = \"fp16\"` needs a GPU; this run is on the CPU",
                fix='use "no" (or "bf16") on a CPU, or "auto"',
            )
        return "no" if requested == "auto" else requested
    if requested == "auto":
        return "bf16" if bf16_supported else "fp16"
    return requested


def build_optimizer(answers: Answers, denoiser_params: list, te_param_lists: list[list], device_type: str):
    """AdamW (fused on CUDA: one kernel for every LoRA tensor, and no host-device sync under fp16's
    gradient scaler; the LoRA weights are float32 on the device), 8-bit AdamW or Prodigy, with one
    learning rate per part. On the CPU AdamW keeps torch's default implementation."""
    import torch

    training = answers.training
    groups = [{"params": denoiser_params, "lr": training.unet_lr}]
    te_rates = [training.text_encoder_lr, training.text_encoder_2_lr or training.text_encoder_lr]
    for params, lr in zip(te_param_lists, te_rates, strict=False):
        if params:
            groups.append({"params": params, "lr": lr})
    if training.optimizer == "adamw":
        return torch.optim.AdamW(groups, weight_decay=1e-2, fused=device_type == "cuda")
    if training.optimizer == "adamw8bit":
        if device_type != "cuda":
            raise UserError('`training.optimizer = "adamw8bit"` needs a CUDA GPU', fix='use "adamw"')
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise UserError("8-bit AdamW needs bitsandbytes", fix="pip install 'lora-wizard[bnb]', or use \"adamw\"") from None
        return bnb.optim.AdamW8bit(groups, weight_decay=1e-2)
    try:
        from prodigyopt import Prodigy
    except ImportError:
        raise UserError("the Prodigy optimizer needs prodigyopt", fix="pip install 'lora-wizard[prodigy]', or use \"adamw\"") from None
    return Prodigy(groups, weight_decay=1e-2)


def build_lr_scheduler(answers: Answers, optimizer, total_steps: int):
    from diffusers.optimization import get_scheduler

    training = answers.training
    name = {"constant": "constant_with_warmup"}.get(training.lr_scheduler, training.lr_scheduler)
    return get_scheduler(name, optimizer, num_warmup_steps=training.warmup_steps, num_training_steps=total_steps)
