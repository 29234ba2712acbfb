"""The performance bench still runs: `bench/run.py --quick` end to end, and the GPU section's cases on
the CPU (SD 1.5's on the small bench model, SDXL's on a tiny SDXL shape). No timing is asserted
(other jobs share the machine); the figures must exist and be sane."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[Path, Path, str]:
    """(results folder, model cache folder, stdout) of one `bench/run.py --quick`."""
    import torch

    work = tmp_path_factory.mktemp("bench")
    out, cache = work / "results", work / "cache"
    # On a GPU machine the quick run would build a full-size SD 1.5 model; the smoke test leaves it out.
    skip_gpu = ["--skip-gpu"] if torch.cuda.is_available() else []
    done = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--out", str(out), "--cache", str(cache), *skip_gpu],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, cache, done.stdout


def test_quick_run_writes_every_figure(quick_run) -> None:
    out, _, _ = quick_run
    results = json.loads((out / "latest.json").read_text())
    training = results["training"]
    assert set(training["variants"]) >= {"bare loop (floor)", "engine", "engine, latents not cached",
                                         "engine, text encoder run every step", "engine, text encoder trained"}
    for figures in training["variants"].values():
        assert figures["seconds_per_step"] > 0
    for ratio in ("engine_over_bare", "latent_cache_speedup", "text_cache_speedup", "frozen_over_trained_text_encoder"):
        assert 0.1 < training[ratio] < 10, (ratio, training[ratio])
    assert training["flops"]["vae_encode_gflop"] > 0 and training["flops"]["lora_step_gflop"] > 0
    first = results["first_step"]
    assert 0 < first["to_started_s"] <= first["to_ready_s"] <= first["to_first_step_s"]
    assert first["peak_rss_mb"] > 50
    assert results["startup"]["help_s"] > 0
    assert results["first_paint"]["measured"], results["first_paint"]
    assert [row["key"] for row in results["target_rows"]] == ["engine_over_bare", "latent_cache_speedup", "help_s"]
    assert all(row["met"] in (True, False) for row in results["target_rows"])


def test_quick_run_prints_the_table_and_skips_the_gpu_cleanly(quick_run) -> None:
    import torch

    out, _, stdout = quick_run
    table = (out / "latest.md").read_text()
    assert table in stdout
    assert "| engine step time / bare loop step time |" in table
    assert "Machine: " in table and f"torch {torch.__version__}" in table
    if not torch.cuda.is_available():
        assert "GPU section (e): not measured: no CUDA device" in table


def test_gpu_case_runs_on_the_cpu_and_checkpointing_keeps_every_lora_gradient(quick_run) -> None:
    _, cache, _ = quick_run
    model = next(cache.glob("model-*"))
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu_case.py"), "--model", str(model), "--train", str(model / "data" / "train"),
         "--resolution", "64", "--batch", "2", "--dim", "4", "--checkpointing", "--uncached", "--steps", "1", "--rounds", "1"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    case = json.loads(done.stdout.strip().splitlines()[-1])
    reached, total = case["lora_grads"]
    assert total > 0 and reached == total  # gradient checkpointing must not cut the adapters off
    assert case["engine"]["images_per_second"] > 0 and case["bare"]["images_per_second"] > 0
    assert case["latent_cache_speedup"] > 0


def tiny_sdxl_configs(tokenizer_dir: Path) -> dict:
    """engine/tiny_sdxl.py's tiny SDXL shape (tiny_sdxl_models) as the part configs bench/gpu.py builds from."""
    from transformers import CLIPTokenizer

    from engine.tiny import tiny_text_encoder_config, tiny_vae_config, write_tiny_tokenizer
    from engine.tiny_sdxl import TINY_SDXL_TEXT_WIDTHS, tiny_sdxl_unet_config

    vocab_size = len(CLIPTokenizer.from_pretrained(write_tiny_tokenizer(tokenizer_dir)))
    first_width, second_width = TINY_SDXL_TEXT_WIDTHS
    second = tiny_text_encoder_config(vocab_size, hidden=second_width, layers=3, projection_dim=second_width)
    second.num_attention_heads = second_width // 8
    second.hidden_act = "gelu"
    return {
        "unet": tiny_sdxl_unet_config(),
        "vae": {**tiny_vae_config(), "scaling_factor": 0.13025, "force_upcast": True},
        "text_encoder": tiny_text_encoder_config(vocab_size, hidden=first_width, layers=3).to_dict(),
        "text_encoder_2": second.to_dict(),
    }


def test_sdxl_case_runs_on_the_cpu_on_a_tiny_sdxl_model(tmp_path, monkeypatch) -> None:
    """The GPU section's SDXL path end to end on a tiny SDXL shape at 64 px, one step: the fp16
    folder built from part configs, the case in its own process with the wizard's 8 GB settings
    (UNet only, gradient checkpointing), the bare loop conditioning SDXL's UNet, and the report's row."""
    import torch
    from safetensors.torch import load_file

    monkeypatch.syspath_prepend(str(REPO))
    from bench.gpu import measure_sdxl
    from bench.report import sdxl_table

    sdxl = measure_sdxl(tmp_path / "sdxl", peak=None, steps=1, rounds=1, configs=tiny_sdxl_configs(tmp_path / "tokenizer"),
                        resolution=64, images=2)
    assert sdxl["measured"], sdxl.get("reason")
    unet_weights = load_file(tmp_path / "sdxl" / "unet" / "diffusion_pytorch_model.safetensors")
    assert {tensor.dtype for tensor in unet_weights.values()} == {torch.float16}  # built in fp16
    case = sdxl["case"]
    assert case["family"] == "sdxl" and case["resolution"] == 64 and case["batch"] == 1 and case["checkpointing"]
    reached, total = case["lora_grads"]
    assert total > 0 and reached == total
    assert case["engine"]["images_per_second"] > 0 and case["bare"]["images_per_second"] > 0
    assert 0.1 < case["engine_over_bare"] < 10
    assert sdxl["tflop_per_image"] == 13.5 and sdxl["mfu"] is None  # no peak TFLOP/s given
    if torch.cuda.is_available():
        assert sdxl["within_vram_goal"] is True and case["peak_allocated_gb"] > 0
    else:
        assert sdxl["optimizer"] == "adamw" and "needs a CUDA GPU" in sdxl["optimizer_note"]
        assert sdxl["within_vram_goal"] is None and "peak_allocated_gb" not in case
    table = sdxl_table(sdxl)
    assert table.startswith("SDXL UNet shape, random weights, 64 px, batch 1, LoRA dim 8")
    assert table.splitlines()[-1].startswith(f"| {case['engine']['images_per_second']:.2f} |")


def test_full_bench_model_costs_what_sd15_costs(monkeypatch) -> None:
    """The full bench model keeps SD 1.5's proportions, counted on the meta device (no arithmetic):
    a ~12M-parameter UNet, a VAE encode worth what SD 1.5's is worth against its LoRA step at 512 px
    (0.65), and a text encoder of under 3% of a UNet forward."""
    import torch
    from diffusers import UNet2DConditionModel

    monkeypatch.syspath_prepend(str(REPO))
    from bench.flops import flop_profile, sd15_profile
    from bench.model import FULL, text_encoder_config, unet_config, vae_config

    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_config(FULL))
    assert 10e6 < sum(p.numel() for p in unet.parameters()) < 16e6
    bench = flop_profile(unet_config(FULL), vae_config(FULL), text_encoder_config(FULL, 1000).to_dict(),
                         resolution=FULL.resolution, lora_dim=FULL.lora_dim)
    sd15 = sd15_profile()
    assert 1.6 < sd15["lora_step_gflop"] / 1000 < 1.9  # performance-facts.md: about 1.6 TFLOP
    assert abs(bench["vae_encode_per_lora_step"] - sd15["vae_encode_per_lora_step"]) < 0.05
    assert bench["text_encoder_per_unet_forward"] < 0.03


def tiny_flux_configs() -> dict:
    """engine/tiny_flux.py's tiny FLUX.1 dev shape as the part configs bench/gpu_flux.py builds from."""
    from engine.tiny_flux import tiny_flux_transformer, tiny_flux_vae, tiny_t5_encoder

    transformer, vae, t5 = tiny_flux_transformer(), tiny_flux_vae(), tiny_t5_encoder(1000)
    from engine.tiny import tiny_text_encoder_config
    from engine.tiny_flux import TINY_CLIP_WIDTH

    return {
        "transformer": {key: value for key, value in transformer.config.items() if not key.startswith("_")},
        "ae": {key: value for key, value in vae.config.items() if not key.startswith("_")},
        "clip": tiny_text_encoder_config(1000, hidden=TINY_CLIP_WIDTH).to_dict(),
        "t5": {**t5.config.to_dict(), "is_encoder_decoder": False},
    }


def test_flux_cases_run_on_the_cpu_on_a_tiny_flux_model(tmp_path, monkeypatch) -> None:
    """The GPU section's FLUX.1 path end to end on the tiny FLUX.1 shape at 64 px, one step each: the
    four bf16 files built from part configs, each memory setting in its own process (rank 16, the
    transformer only, gradient checkpointing), and the report's rows. Offloading only acts on CUDA."""
    import torch
    from safetensors.torch import load_file

    monkeypatch.syspath_prepend(str(REPO))
    from bench.gpu_flux import FLUX_SETTINGS, measure_flux
    from bench.report import flux_table

    flux = measure_flux(tmp_path / "flux", peak=None, steps=1, rounds=1, configs=tiny_flux_configs(), resolution=64, images=2)
    assert flux["measured"], flux
    transformer = load_file(tmp_path / "flux" / "flux1-dev.safetensors")
    assert "double_blocks.0.img_attn.qkv.weight" in transformer  # BFL's layout
    assert {tensor.dtype for tensor in transformer.values()} == {torch.bfloat16}  # built in bf16
    assert list(flux["cases"]) == [name for name, _, _ in FLUX_SETTINGS]
    for (name, fp8, offload), case in zip(FLUX_SETTINGS, flux["cases"].values(), strict=True):
        assert "failed" not in case, case.get("failed")
        assert case["family"] == "flux1-dev" and case["resolution"] == 64 and case["checkpointing"]
        assert ("fp8_base" in case["options"], "offload_blocks" in case["options"]) == (fp8, offload), name
        reached, total = case["lora_grads"]
        assert total > 0 and reached == total
        assert case["engine"]["images_per_second"] > 0 and "bare" not in case
    if not torch.cuda.is_available():
        assert flux["fp8_within_goal"] is None and flux["offload_slowdown_within_goal"] is None
    table = flux_table(flux)
    assert table.startswith("FLUX.1 dev shapes, random weights, 64 px, batch 1, LoRA rank 16")
    assert "| fp8 + offloading |" in table and "Goals (issue 17)" in table
