"""Shared fixtures: a tiny SD 1.x model and a kohya-style dataset, built once per session, offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Runs size torch's threads to the cores free when they start (engine/cpu_threads.py), which
# depends on what else the machine does. Tests compare runs bit for bit (in this process and in
# the commands they start): every run here keeps torch's usual count, whatever the load.
if "OMP_NUM_THREADS" not in os.environ:
    import torch

    os.environ["OMP_NUM_THREADS"] = str(torch.get_num_threads())


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny SD 1.x-shaped diffusers folder (random weights, real on-disk format)."""
    from engine.tiny import build_tiny_sd1_pipeline

    return build_tiny_sd1_pipeline(tmp_path_factory.mktemp("tiny-sd1") / "model")


@pytest.fixture(scope="session")
def tiny_sdxl_model_dir(tmp_path_factory) -> Path:
    """A tiny SDXL-shaped diffusers folder (random weights), built once for the session."""
    from engine.tiny_sdxl import build_tiny_sdxl_pipeline

    return build_tiny_sdxl_pipeline(tmp_path_factory.mktemp("tiny-sdxl") / "model")


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> tuple[Path, Path]:
    """(train root, reg root) in kohya's layout: `10_usu bear/` x4 images, `1_bear/` x8 images."""
    from engine.tiny import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("dataset"), size=64)


def write_answers(folder: Path, model: Path, train: Path, reg: Path | None = None, **sections) -> Path:
    """An answers file for the tiny model; `sections` override keys, e.g. training={"max_steps": 4};
    a None value removes the key (its default applies)."""
    import tomli_w

    data = {
        "model": {"path": str(model)},
        "dataset": {"train_dir": str(train), "resolution": 64},
        "network": {"dim": 4, "alpha": 4},
        "training": {"max_steps": 6, "batch_size": 2, "unet_lr": 1e-3, "text_encoder_lr": 1e-3, "log_every_steps": 2},
        "output": {"dir": str(folder / "output"), "name": "tiny"},
    }
    if reg is not None:
        data["dataset"]["reg_dir"] = str(reg)
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
        data[section] = {k: v for k, v in data[section].items() if v is not None}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "answers.toml"
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return path


# --- torch threads and LoRA helpers (tests/engine/test_lora.py, test_sdxl.py, test_sampling.py, tests/tui/test_generate_command.py)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module (`pytestmark = pytest.mark.usefixtures("one_torch_thread")`): tiny models
    run fastest on one; on a shared 2-core machine two threads spin against each other (10-100x slower).
    The count is restored at the module's end: a later bit-exact comparison must run with its usual threads."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def randomize_lora_weights(model, *, seed: int = 1, scale: float = 0.1, only_up: bool = True) -> None:
    """Seeded random LoRA weights (`engine.network.add_lora` starts lora_up at zero: such a LoRA changes
    nothing): the up weights, or with `only_up=False` the down weights too, so one seed is one LoRA."""
    import torch

    from engine.network import lora_parameters

    unet_weights, text_weights = lora_parameters(model)  # lora_down, lora_up per layer
    weights = unet_weights[1::2] + text_weights[1::2] if only_up else unet_weights + text_weights
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for weight in weights:
            weight.copy_(torch.randn(weight.shape, generator=generator) * scale)


def relative_difference(actual, expected) -> float:
    """Largest absolute difference of two tensors, relative to the largest magnitude of `expected`."""
    return ((actual - expected).abs().max() / expected.abs().max()).item()


def library_warnings():
    """`with library_warnings() as messages:` collects what diffusers, transformers and peft warn about in
    the block: their logged warnings (their loggers do not propagate to root), then its Python warnings."""
    import contextlib
    import logging
    import warnings

    class Collect(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.WARNING)
            self.messages: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.messages.append(record.getMessage())

    @contextlib.contextmanager
    def collecting():
        handler = Collect()
        loggers = [logging.getLogger(name) for name in ("diffusers", "transformers", "peft")]
        for logger in loggers:
            logger.addHandler(handler)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                yield handler.messages
        finally:
            for logger in loggers:
                logger.removeHandler(handler)
        handler.messages.extend(str(warning.message) for warning in caught)

    return collecting()


def copy_with_nan_vae(model_dir: Path, copy: Path) -> Path:
    """A copy of a diffusers model folder whose VAE encodes every image to NaN latents (as SDXL's does in fp16)."""
    import shutil

    import torch
    from diffusers import AutoencoderKL

    shutil.copytree(model_dir, copy)
    vae = AutoencoderKL.from_pretrained(copy, subfolder="vae")
    with torch.no_grad():
        vae.quant_conv.bias.fill_(float("nan"))
    vae.save_pretrained(copy / "vae")
    return copy


@pytest.fixture(scope="session")
def demo(tmp_path_factory) -> Path:
    """The demo's tiny model, dataset and answers (`lora-wizard demo`), built once; tests only read it."""
    from engine.demo import create_demo

    folder = tmp_path_factory.getbasetemp() / "wizard-demo"
    create_demo(folder)
    return folder


@pytest.fixture
def english_locale(monkeypatch):
    """The app in English, whatever the machine's locale."""
    from tui_lora.i18n import set_language

    monkeypatch.setenv("LANG", "en_US.UTF-8")
    monkeypatch.delenv("LC_ALL", raising=False)
    monkeypatch.delenv("LC_MESSAGES", raising=False)
    yield
    set_language("en")


@pytest.fixture
def workspace(tmp_path, english_locale, monkeypatch) -> Path:
    """The folder the wizard runs in, in English (its draft and settings live in a private folder)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def tiny_flux(tmp_path_factory):
    """A tiny FLUX.1 dev model as kohya's four files (engine/tiny_flux.py), with its tokenizers beside them."""
    from engine.tiny_flux import write_tiny_flux_files

    return write_tiny_flux_files(tmp_path_factory.mktemp("tiny-flux"), variant="dev")


def write_flux_answers(folder: Path, files, train: Path, reg: Path | None = None, *, model: dict | None = None, **sections) -> Path:
    """An answers file for a FLUX.1 model in kohya's four files (`files`: engine.tiny_flux.FluxFiles);
    `model` overrides `[model]` keys (e.g. a wrong file in a slot), `sections` as for write_answers."""
    import tomli_w
    import tomllib

    path = write_answers(folder, files.transformer, train, reg, **sections)
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    data["model"].update({"ae": str(files.vae), "clip_l": str(files.clip), "t5xxl": str(files.t5)}, **(model or {}))
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return path
