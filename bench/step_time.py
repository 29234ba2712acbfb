"""Time one LoRA training step of a full-size SD 1.5-shaped UNet, to calibrate engine/checks/estimate.py.

The UNet is built from engine/families/configs/sd15/unet.json with random weights (speed does
not depend on the weights, and nothing is downloaded). LoRA rank 8 on kohya's default UNet
targets, AdamW, one batch of random latents and text-encoder states; the frozen text encoder and
VAE are left out, as with cached latents and a frozen text encoder. Prints seconds per step and
the achieved TFLOP/s (FLOPs counted by torch.utils.flop_counter on the first step).

    python bench/step_time.py --device cpu --resolution 256 --steps 2
    python bench/step_time.py --device cuda --resolution 512 --batch 4 --dtype bf16
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

CONFIG = Path(__file__).resolve().parents[1] / "engine" / "families" / "configs" / "sd15" / "unet.json"
KOHYA_UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--resolution", type=int, default=256, help="image size in pixels (latent = size / 8)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up step")
    parser.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32", help="autocast dtype")
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing")
    args = parser.parse_args()

    import torch
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    device = torch.device(args.device)
    unet = UNet2DConditionModel.from_config(json.loads(CONFIG.read_text()))
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=8, lora_alpha=8, target_modules=KOHYA_UNET_TARGETS))
    if args.checkpointing:
        unet.enable_gradient_checkpointing()
    unet.to(device).train()
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    side = args.resolution // 8
    latents = torch.randn(args.batch, 4, side, side, device=device)
    context = torch.randn(args.batch, 77, 768, device=device)
    timesteps = torch.randint(0, 1000, (args.batch,), device=device)
    autocast_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(args.dtype)

    def step() -> None:
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            prediction = unet(latents, timesteps, encoder_hidden_states=context, return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(prediction.float(), latents)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    counter = FlopCounterMode(display=False)
    with counter:
        step()  # warm-up, counted
    synchronize()
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
    synchronize()
    seconds = (time.perf_counter() - started) / args.steps
    tflop = counter.get_total_flops() / 1e12
    print(
        f"device={args.device} threads={torch.get_num_threads()} resolution={args.resolution} batch={args.batch} "
        f"dtype={args.dtype} checkpointing={args.checkpointing}: {seconds:.3f} s/step, "
        f"{tflop:.3f} TFLOP/step, {tflop / seconds:.3f} TFLOP/s achieved"
    )
    if device.type == "cuda":
        print(f"peak memory allocated: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
