"""The training's parts, built in the order setup builds them (engine/train.py Trainer.setup):
the accelerator (precision, device, processes), then, after the caching phases, the LoRA layers
and the optimizer handed to accelerate."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine.config import Answers
from engine.errors import UserError
from engine.seeds import derive_seed

if TYPE_CHECKING:
    from engine.families import LoadedModel


def start_accelerator(answers: Answers) -> tuple[Any, str, str]:
    """The accelerator, the precision in force and the device's type ("cuda", "mps", "cpu")."""
    import torch
    from accelerate import Accelerator

    from engine.devices import enable_tf32
    from engine.optim import resolve_precision

    training = answers.training
    device_type = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    bf16 = device_type == "cuda" and torch.cuda.is_bf16_supported()
    precision = resolve_precision(training.mixed_precision, device_type, bf16)
    # Under torchrun, accelerate joins the process group (NCCL on GPUs, gloo on CPUs).
    accelerator = Accelerator(mixed_precision=precision, cpu=device_type == "cpu")
    if accelerator.num_processes != training.processes:
        raise UserError(
            f"`training.processes = {training.processes}` but {accelerator.num_processes} processes were started",
            fix="start it with `lora-wizard train` (it launches the processes), or set processes to match",
        )
    if answers.output.tensorboard and accelerator.is_main_process:
        from engine.tensorboard import check_tensorboard_installed

        check_tensorboard_installed()
    enable_tf32(accelerator.device)
    return accelerator, precision, device_type


def frozen_dtype(precision: str, device_type: str) -> Any:
    """The frozen base weights' dtype: the training precision on a GPU (as kohya: only the LoRA
    weights are fp32), fp32 on a CPU."""
    import torch

    if device_type == "cpu":
        return torch.float32
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)


def place_denoiser(model: LoadedModel, training: Any, device: Any, weight_dtype: Any) -> None:
    """The frozen denoiser on the device in the training precision; with `fp8_base` stored in
    float8 and widened per layer, with `offload_blocks` its blocks in host memory until they run
    (diffusers' mechanisms: engine/families/flux_memory.py)."""
    from engine.families.flux_memory import offload_blocks, store_in_fp8

    denoiser = model.denoiser
    if training.offload_blocks and device.type == "cuda":
        denoiser.to(dtype=weight_dtype)
        offload_blocks(denoiser, device)
    else:
        denoiser.to(device, dtype=weight_dtype)
    denoiser.requires_grad_(False)
    if training.fp8_base:
        store_in_fp8(denoiser, weight_dtype)


def add_lora_layers(model: LoadedModel, answers: Answers, device: Any, weight_dtype: Any) -> tuple[list, list, list[str]]:
    """The denoiser on the device with the LoRA layers added (and `[network] init_from` loaded):
    the denoiser's and the text encoders' LoRA parameters (fp32), and the notes on what of init_from
    was kept fresh or ignored."""
    import torch

    from engine.devices import use_channels_last
    from engine.network import NetworkSpec, add_network, load_lora_file_into, lora_parameters

    network, training = answers.network, answers.training
    place_denoiser(model, training, device, weight_dtype)
    if use_channels_last(device, training.channels_last):
        model.denoiser.to(memory_format=torch.channels_last)  # before the LoRA layers: those stay contiguous
    # The LoRA's initial (random) down weights come from the global generator: seed it.
    torch.manual_seed(derive_seed(training.seed, "lora-init"))
    add_network(model, NetworkSpec.from_section(network), train_text_encoder=network.train_text_encoder)
    notes = load_lora_file_into(model, network.init_from).notes if network.init_from else []
    denoiser_params, te_params = lora_parameters(model)
    for param in (*denoiser_params, *te_params):
        param.data = param.data.float()
    model.denoiser.train()
    trained_encoders = model.family.trainable_text_encoders(model) if network.train_text_encoder else []
    for encoder in model.text_encoders:
        encoder.train(any(encoder is trained for trained in trained_encoders))
    if training.gradient_checkpointing or training.offload_blocks:
        model.denoiser.enable_gradient_checkpointing()
        for encoder in trained_encoders:
            encoder.gradient_checkpointing_enable()
    return denoiser_params, te_params, notes


def prepare_for_training(accelerator: Any, model: LoadedModel, answers: Answers, *, denoiser_params: list, total_steps: int,
                         device_type: str, text_encoders_parked: bool) -> tuple[Any, Any]:
    """The optimizer and the learning-rate schedule; the model's trained parts and the optimizer
    wrapped by accelerate (in place on `model`)."""
    from engine.network import text_encoder_parameters
    from engine.optim import build_lr_scheduler, build_optimizer

    optimizer = build_optimizer(answers, denoiser_params, text_encoder_parameters(model), device_type)
    lr_scheduler = build_lr_scheduler(answers, optimizer, total_steps)
    # Parked text encoders stay out of `prepare`: it would move them back to the GPU, and they
    # only run again for sample images, which use the unwrapped model anyway.
    encoders_in_loop = [] if text_encoders_parked else list(model.text_encoders)
    # Group offloading places the blocks itself: accelerate must not move the whole denoiser over.
    offloaded = answers.training.offload_blocks and accelerator.device.type == "cuda"
    placement = [not offloaded] + [True] * (len(encoders_in_loop) + 1)
    model.denoiser, *prepared_encoders, optimizer = accelerator.prepare(
        model.denoiser, *encoders_in_loop, optimizer, device_placement=placement
    )
    if encoders_in_loop:
        model.text_encoders = prepared_encoders
    if answers.training.compile:
        model.denoiser.compile()  # in place: the module and its parameter names stay as they are
    return optimizer, lr_scheduler
