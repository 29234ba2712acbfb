"""What training costs, as data with its source in a comment: each model family's parameters,
FLOPs and activations, the GPUs' speeds, and the fixed costs of a step. `engine.checks.estimate`
turns these into a run's VRAM and time.
"""

from __future__ import annotations

from dataclasses import dataclass

GiB = 1024**3
GB = 1000**3


@dataclass(frozen=True)
class FamilyCost:
    """What training one model family costs, at the family's own resolution."""

    family: str
    label: str
    resolution: int
    unet_params: int
    text_encoder_params: int  # every text encoder of the family together
    vae_params: int
    lora_params_per_rank_unet: int  # kohya's default targets
    lora_params_per_rank_text_encoders: int
    tflop_per_image: float  # one LoRA step, forward + backward, latents cached
    vae_encode_tflop: float  # added per image when latents are not cached
    activations_gib: float  # per image, without gradient checkpointing
    activations_checkpointed_gib: float  # per image, with gradient checkpointing
    vae_encode_gib: float  # the tensors alive while the fp32 VAE encodes one image (its weights aside)
    vae_decode_gib: float  # ... while the fp32 VAE decodes one image (a sample)
    unet_sampling_gib: float  # ... while the fp32 UNet denoises one image with guidance (a batch of 2)
    # The denoiser's blocks that `[training] offload_blocks` keeps in host memory (FLUX.1's double and
    # single blocks), and the largest one: with offloading, two of them are on the GPU (the one that
    # runs and the next, copied ahead). 0: the family has no block offloading.
    offloadable_params: int = 0
    largest_block_params: int = 0
    # RAM per frozen parameter while loading: SD files are converted to diffusers in fp32 (the
    # file's tensors and the built model, 2 x 4 bytes); FLUX.1's parts are read straight into the
    # load dtype (bf16: 2 x 2 bytes).
    load_bytes_per_param: int = 8

    @property
    def frozen_params(self) -> int:
        return self.unet_params + self.text_encoder_params + self.vae_params


# Parameter counts: computed from the shipped configs (engine/families/configs/<family>/*.json) on
# the meta device; tests/engine/test_estimate_sources.py recomputes them. The three families share
# one VAE architecture (83,653,863 parameters).
# VAE encoding: the largest total of tensors alive while the VAE encodes one image in fp32, counted
# on the meta device with attention as CUDA's memory-efficient kernel (no N x N score matrix): 0.625
# GiB at 512 px, 2.5 GiB at 1024 px (five 128-channel full-size maps in a ResNet block); the test
# above recounts it. The allocator's rounding and cuDNN's workspace come on top (not counted).
# Sample images, counted the same way: decoding one image, 0.75 GiB at 512 px and 3.0 GiB at 1024 px
# (the decoder's up blocks run at full size); one denoising step with classifier-free guidance
# (the UNet's forward pass on 2 latents, no gradients), 0.25 GiB (SD 1.x/2.x) and 0.62 GiB (SDXL).
FAMILY_COSTS: dict[str, FamilyCost] = {
    # SD 1.x: UNet 859,520,964 + CLIP-L 123,060,480 + VAE; LoRA targets as kohya's networks/lora.py
    # (192 UNet + 72 text-encoder modules). TFLOP: performance-facts.md (UNet fwd ~0.80 TFLOP at 64x64
    # latents; a LoRA step ~2x fwd = 1.6; VAE encoder 1.13 at 512).
    # Activations: kohya_ss#2474 (~4 GB for SD1.5 LoRA at batch 1 with checkpointing) minus
    # 2.0 GiB fp16 weights and 0.5 GiB context = ~1.5 GiB; checkpointing saves 1.25 GB
    # (performance-facts.md), so ~2.75 GiB without it.
    "sd1": FamilyCost(
        "sd1", "SD 1.x", 512, unet_params=859_520_964, text_encoder_params=123_060_480, vae_params=83_653_863,
        lora_params_per_rank_unet=423_936, lora_params_per_rank_text_encoders=165_888, tflop_per_image=1.6,
        vae_encode_tflop=1.13, activations_gib=2.75, activations_checkpointed_gib=1.5, vae_encode_gib=0.625,
        vae_decode_gib=0.75, unet_sampling_gib=0.254,
    ),
    # SD 2.x: UNet 865,910,724, OpenCLIP-H text encoder 340,387,840 with 23 layers, VAE. The UNet
    # has SD 1.x's shape and cost per latent pixel, so FLOPs and activations are SD 1.x's
    # (arithmetic, not measured).
    "sd2": FamilyCost(
        "sd2", "SD 2.x", 512, unet_params=865_910_724, text_encoder_params=340_387_840, vae_params=83_653_863,
        lora_params_per_rank_unet=432_128, lora_params_per_rank_text_encoders=423_936, tflop_per_image=1.6,
        vae_encode_tflop=1.13, activations_gib=2.75, activations_checkpointed_gib=1.5, vae_encode_gib=0.625,
        vae_decode_gib=0.75, unet_sampling_gib=0.254,
    ),
    # SDXL: UNet 2,567,463,684 + CLIP-L 123,060,480 + OpenCLIP-bigG with projection 694,659,840 + VAE.
    # TFLOP: performance-facts.md (LoRA step ~13.5 TFLOP at 128x128 latents; VAE 4x SD's at 1024).
    # Activations: sd-scripts docs/train_SDXL-en.md: a LoRA "can be done with 8GB GPU memory (10GB
    # recommended)" with the UNet only, cached text-encoder outputs and latents (kohya then keeps
    # the text encoders and the VAE on the CPU), checkpointing and an 8-bit optimizer at dim 4-8:
    # 8 GiB minus the 4.8 GiB fp16 UNet, 0.5 GiB context and ~0.2 GiB LoRA state = ~2.5 GiB with
    # checkpointing. Without it, SD 1.x's 1.25 GB scaled by the forward FLOP ratio
    # 6.8 / 0.8 = 8.5 (~+10.6): derived, not measured.
    "sdxl": FamilyCost(
        "sdxl", "SDXL", 1024, unet_params=2_567_463_684, text_encoder_params=817_720_320, vae_params=83_653_863,
        lora_params_per_rank_unet=2_659_840, lora_params_per_rank_text_encoders=903_168, tflop_per_image=13.5,
        vae_encode_tflop=4.52, activations_gib=13.1, activations_checkpointed_gib=2.5, vae_encode_gib=2.5,
        vae_decode_gib=3.0, unet_sampling_gib=0.616,
    ),
}

# FLUX.1, counted on the meta device from diffusers' FluxTransformer2DModel config of FLUX.1 [dev]
# (its defaults with guidance_embeds; [schnell] has no guidance embedder), T5-XXL's encoder
# (google/t5-v1_1-xxl: d_model 4096, d_ff 10240, 24 layers, 64 heads) with CLIP-L, and the 16-channel
# autoencoder (ae.safetensors): tests/engine/test_estimate_sources.py recounts them. LoRA targets:
# every Linear of the 19 double and 38 single blocks (engine/families/flux_lora.py, kohya's
# lora_flux); CLIP-L's as SD 1.x's. Offloading: the 57 blocks hold 11,837,283,328 parameters, the
# largest (a double block) 339,831,296; 64,125,024 (dev) stay on the GPU outside them.
# TFLOP: the transformer's forward pass at 1024 px (4,096 image + 512 text tokens), 74.4 TFLOP as
# torch's FlopCounterMode counts it on the meta device; a LoRA step ~2x forward (as SD's). The
# figures are dev's (T5 512 tokens); schnell's 256 tokens cost a little less.
# Activations, derived (not measured): with checkpointing the 57 blocks' inputs (4,608 tokens x 3,072
# x bf16 = 27 MiB each, 1.5 GiB) plus one block recomputed with its gradients (~1 GiB); without,
# what each block saves for backward (about 60 bf16 values of 3,072 width per token: ~0.52 GiB a
# block, 29.5 GiB). Sampling: one transformer pass (dev is guidance-distilled: 1 latent, no
# classifier-free batch of 2), counted like SD's.
_FLUX_TEXT_ENCODERS = 123_060_480 + 4_762_310_656  # CLIP-L + T5-XXL's encoder
for _family, _label, _transformer in (
    ("flux1-dev", "FLUX.1 dev", 11_901_408_320),
    ("flux1-schnell", "FLUX.1 schnell", 11_891_178_560),
):
    FAMILY_COSTS[_family] = FamilyCost(
        _family, _label, 1024, unet_params=_transformer, text_encoder_params=_FLUX_TEXT_ENCODERS, vae_params=83_819_683,
        lora_params_per_rank_unet=5_369_856, lora_params_per_rank_text_encoders=165_888, tflop_per_image=148.8,
        vae_encode_tflop=4.52, activations_gib=29.5, activations_checkpointed_gib=2.5, vae_encode_gib=2.51,
        vae_decode_gib=3.0, unet_sampling_gib=0.804, offloadable_params=11_837_283_328,
        largest_block_params=339_831_296, load_bytes_per_param=4,
    )

# The CUDA context plus cuBLAS / cuDNN workspaces of one process (assumed, typically 0.3-0.6 GB).
CUDA_CONTEXT_GIB = 0.5
# Bytes a trained (LoRA) parameter costs with each optimizer: its fp32 weight and gradient (4 + 4)
# plus the optimizer's state. AdamW: two fp32 moments (8). bitsandbytes' 8-bit AdamW: two 8-bit
# moments (2; its per-block scales are a few bytes per 2,048 values). Prodigy: two moments and
# its `s` and `p0` copies (16).
BYTES_PER_TRAINED_PARAM = {"adamw": 16, "adamw8bit": 10, "prodigy": 24}
GRADIENT_BYTES = 4  # of those, the fp32 gradient: freed after each optimizer step (zero_grad set_to_none)
# Gradient checkpointing costs ~18% speed (performance-facts.md).
CHECKPOINTING_SLOWDOWN = 1 / (1 - 0.18)
# fp32 instead of fp16 mixed precision: 2.2x slower on a T4 (performance-facts.md).
FP32_SLOWDOWN = 2.2
# Per-step cost that does not shrink with a faster GPU: kernel launches, the optimizer step,
# data loading. Assumed; torchtune#522 measured 40-50 ms for a per-step loss.item() sync alone,
# which the engine avoids by reading the loss back every log_every_steps.
STEP_OVERHEAD_S = 0.03


@dataclass(frozen=True)
class GpuSpeed:
    """Dense fp16/bf16 tensor-core peak with fp32 accumulation, which mixed precision uses."""

    pattern: str  # regular expression matched against the GPU name
    label: str
    peak_tflops: float
    compute_capability: tuple[int, int]


GPU_SPEEDS: tuple[GpuSpeed, ...] = (
    # NVIDIA H100 / H200 datasheets: 989 TFLOP/s dense bf16 (SXM), 756 (PCIe).
    GpuSpeed(r"H100.*PCIe", "H100 PCIe", 756.0, (9, 0)),
    GpuSpeed(r"H100|H200|GH200", "H100 / H200 SXM", 989.0, (9, 0)),
    # NVIDIA A100 datasheet: 312 TFLOP/s dense bf16.
    GpuSpeed(r"A100", "A100", 312.0, (8, 0)),
    # NVIDIA L40S datasheet: 733 with sparsity -> 362 dense.
    GpuSpeed(r"L40S", "L40S", 362.0, (8, 9)),
    # NVIDIA L4 datasheet: 242 with sparsity -> 121 dense.
    GpuSpeed(r"\bL4\b", "L4", 121.0, (8, 9)),
    # NVIDIA A10 datasheet: 250 with sparsity -> 125 dense.
    GpuSpeed(r"\bA10\b", "A10", 125.0, (8, 6)),
    # NVIDIA RTX A6000 datasheet: 309.7 with sparsity -> 154.8 dense (full-rate fp32 accumulate).
    GpuSpeed(r"RTX A6000", "RTX A6000", 154.8, (8, 6)),
    # NVIDIA Ada whitepaper: RTX 4090 165.2, RTX 4080 97.5 (fp16 with fp32 accumulate, dense).
    # Check: SDXL LoRA 13.5 TFLOP / (165.2 x 9%) + 0.03 s = 0.94 s/it, published ~1.08 it/s
    # (kohya_ss#1288).
    GpuSpeed(r"RTX 4090", "RTX 4090", 165.2, (8, 9)),
    GpuSpeed(r"RTX 4080", "RTX 4080", 97.5, (8, 9)),
    # NVIDIA GA102 whitepaper: RTX 3090 71, RTX 3080 59.5 (fp32 accumulate, dense). The published
    # 3090 SDXL LoRA ~1.1 s/it (sd-scripts#827) is 2x faster than this gives: the error bar.
    GpuSpeed(r"RTX 3090", "RTX 3090", 71.0, (8, 6)),
    GpuSpeed(r"RTX 3080", "RTX 3080", 59.5, (8, 6)),
    # GA106: 112 tensor cores x 1.78 GHz x 128 dense FLOP/clock with fp32 accumulate = 25.5.
    GpuSpeed(r"RTX 3060", "RTX 3060", 25.5, (8, 6)),
    # NVIDIA Turing whitepaper: RTX 2080 Ti 56.9 (fp32 accumulate). Check: diffusers docs' SD1.5
    # LoRA, 15k steps of 1x4 images, ~5 h on a 2080 Ti; this model gives ~5.7 h.
    GpuSpeed(r"2080 Ti", "RTX 2080 Ti", 56.9, (7, 5)),
    # NVIDIA T4 datasheet: 65 TFLOP/s fp16 mixed precision.
    GpuSpeed(r"\bT4\b", "T4", 65.0, (7, 5)),
    # NVIDIA V100 datasheet: 112 (PCIe) to 125 (SXM2); the lower figure.
    GpuSpeed(r"V100", "V100", 112.0, (7, 0)),
)

# Model FLOP utilization at batch 1: ~9% for a 4090 SDXL LoRA (performance-facts.md); at large
# batches ~28% (MosaicML SD2, 8x A100, 290 img/s at 512). In between: 1/sqrt(batch) shape, assumed.
UTILIZATION_BATCH_1 = 0.09
UTILIZATION_LARGE_BATCH = 0.28

# Measured by bench/step_time.py on this project's 2-core CPU machine (torch 2.13, fp32): an
# SD1.5-shaped UNet LoRA step at 256 px took 4.4 s for 0.34 TFLOP = 0.077 TFLOP/s on 2 cores.
# Scaling linearly with physical cores is an assumption (memory bandwidth limits it).
CPU_TFLOPS_PER_CORE = 0.0385
