"""Where the training's tensors and frozen modules live, and the GPU's fast paths.

- Host-to-device copies that do not wait: a plain `.to("cuda")` from ordinary (pageable) memory
  returns only once the GPU has finished everything queued before it, so the CPU cannot queue the
  next step while this one runs. From pinned memory with `non_blocking=True` it returns at once.
- Frozen modules whose work is done once setup has cached their outputs (the VAE after the latent
  cache, the frozen text encoders after the caption cache) wait in host memory and come back to the
  GPU only while needed (sample images): about 0.6 GB of VRAM for SD 1.5 (fp32 VAE, bf16 text
  encoder), about 2 GB for SDXL (the second text encoder alone is 1.4 GB in bf16). Which parts
  wait is engine/parking.py's rule; `Parking` here moves them.
- TF32 matrix multiplications on Ampere and later; on request, channels_last for the UNet's
  convolutions (`[training] channels_last`) and `torch.compile` (`[training] compile`, train.py).

Every function here changes nothing on a CPU run: the moves are from the CPU to the CPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


PARKING_DEVICE = "cpu"


def host_to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`tensor` on `device`. From the CPU to a CUDA device the copy goes through pinned memory and
    does not make the CPU wait for the GPU; the pinned block is held until the copy is done (torch's
    caching host allocator records the copy on the stream)."""
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


class Parking:
    """Frozen modules in host memory between uses, by part name ("vae", "text_encoders").

    `park` moves parts to the CPU; `in_use` brings parked ones to the training device for a while.
    On a CPU run both are moves from the CPU to the CPU, and the bookkeeping is the same.
    """

    def __init__(self, device: torch.device, parts: dict[str, list[Any]]):
        self.device = device
        self.parts = parts
        self.parked: set[str] = set()

    def park(self, names: frozenset[str] | set[str]) -> None:
        import torch

        for name in sorted(names):
            self._move(name, PARKING_DEVICE)
            self.parked.add(name)
        if names and self.device.type == "cuda":
            torch.cuda.empty_cache()  # give the freed blocks back, so the driver's figure shows the saving

    @contextmanager
    def in_use(self, *names: str) -> Iterator[None]:
        """The named parts on the training device for the duration; parked ones go back afterwards."""
        moved = [name for name in names if name in self.parked]
        for name in moved:
            self._move(name, self.device)
            self.parked.discard(name)
        try:
            yield
        finally:
            for name in moved:
                self._move(name, PARKING_DEVICE)
                self.parked.add(name)

    def _move(self, name: str, device: Any) -> None:
        for module in self.parts[name]:
            module.to(device)


def enable_tf32(device: torch.device) -> bool:
    """TF32 for float32 matrix multiplications on Ampere and later GPUs (the VAE, the LoRA weights'
    float32 maths). cuDNN convolutions use TF32 by default already. Through
    `set_float32_matmul_precision`, which libraries reading either of torch's TF32 settings accept
    (mixing the old `allow_tf32` and the new `fp32_precision` settings makes torch raise)."""
    import torch

    if device.type != "cuda" or torch.cuda.get_device_capability(device)[0] < 8:
        return False
    torch.set_float32_matmul_precision("high")
    return True


def use_channels_last(device: torch.device, requested: bool) -> bool:
    """The UNet's weights in channels_last (NHWC), when asked for and on CUDA: cuDNN's fast fp16/bf16
    convolutions work in that layout. Not automatic: torch's CUDA GroupNorm works in NCHW and
    converts back, so whether the UNet gains is a measurement (bench/gpu_case.py --channels-last)."""
    return requested and device.type == "cuda"


def loader_workers(device: torch.device, processes: int = 1) -> int:
    """Processes that decode images ahead of the step when latents are not cached. None on a CPU
    run (the step uses the cores; decoding stays on the training thread, as before); on a GPU up to
    4 per training process, leaving that process a core of its own."""
    if device.type != "cuda":
        return 0
    from engine.cpu_threads import allowed_cores

    return max(0, min(4, allowed_cores() // max(1, processes) - 1))
