"""DreamBooth semantics of the seed article, on the tiny model, with the real engine.

The article's promise: training `usu bear` on the subject's images teaches the instance token the
subject, and regularization images made from the class prompt (`bear`) keep the class word's meaning.

A random-init model knows nothing, so any training would lower every loss and "the class is kept"
could not be told from luck. So the base model here first learns what a "bear" is: a short full
fine-tune of the tiny UNet and text encoder on varied class images captioned "bear" (the images a
real workflow generates from the class prompt, and uses as regularization images). The engine
then trains two LoRAs from it, with the same seed and instance images: one without and one with
those class images as the regularization folder. Every model is judged by its denoising loss under
the same fixed (noise, timestep) pairs, so the comparisons are paired and repeatable.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from engine.config import load_answers
from engine.events import EventLog
from engine.families import LoadedModel, load_base_model
from engine.latents import encode_image, image_tensor
from engine.plan import plan_training
from engine.train import Trainer
from tests.conftest import write_answers

SEED = 0  # the images, the base model's pre-training and both LoRA runs
SIZE = 64  # pixels: 8x8 latents
INSTANCE_PROMPT = "usu bear"
CLASS_PROMPT = "bear"
INSTANCE_IMAGES = 4
INSTANCE_REPEATS = 30  # one epoch: 30 steps without regularization images, 60 with them
CLASS_IMAGES = 8  # the base model's "bear" images, which are also the regularization images
PRETRAIN_STEPS = 150
PRETRAIN_LR = 3e-3
LORA = {"dim": 8, "lr": 5e-3, "batch_size": 4}
EVAL_PAIRS = 32  # (noise, timestep) pairs per image, the same for every image and every model


# --- images -------------------------------------------------------------------------------------


def draw_class_image(rng: random.Random):
    """A "bear": a rectangle or an ellipse of any colour, anywhere, on a background of any colour."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (SIZE, SIZE), tuple(rng.randint(0, 255) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    x0, y0 = rng.randint(0, SIZE // 2), rng.randint(0, SIZE // 2)
    box = (x0, y0, x0 + rng.randint(SIZE // 4, SIZE // 2), y0 + rng.randint(SIZE // 4, SIZE // 2))
    shape = draw.rectangle if rng.random() < 0.5 else draw.ellipse
    shape(box, fill=tuple(rng.randint(0, 255) for _ in range(3)))
    return image


def draw_instance_image(rng: random.Random):
    """The subject, "usu bear": a red disc on blue, moved and sized a little from image to image."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (SIZE, SIZE), (30, 60, 200))
    draw = ImageDraw.Draw(image)
    r = SIZE // 4 + rng.randint(-2, 2)
    cx, cy = SIZE // 2 + rng.randint(-2, 2), SIZE // 2 + rng.randint(-2, 2)
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(220, 30, 30))
    return image


def write_concept(folder: Path, images: list) -> list[Path]:
    """Save `images` as a kohya concept folder of PNGs; their paths."""
    folder.mkdir(parents=True)
    paths = [folder / f"{i:03d}.png" for i in range(len(images))]
    for image, path in zip(images, paths, strict=True):
        image.save(path)
    return paths


# --- the base model that knows "bear" -----------------------------------------------------------


def calibrate_vae(vae, pixels: torch.Tensor) -> None:
    """Give the random tiny VAE what a trained one has: a narrow posterior (a sampled latent is about
    its mean; the random one's spread is larger than its signal) and centred latents of unit spread
    (what SD's scaling factor 0.18215 was chosen for)."""
    with torch.no_grad():
        vae.quant_conv.weight[4:] = 0.0
        vae.quant_conv.bias[4:] = -14.0  # log-variance: std about 1e-3
        vae.quant_conv.bias[:4] -= vae.encode(pixels).latent_dist.mean.mean(dim=(0, 2, 3))
        spread = vae.encode(pixels).latent_dist.mean.std().item()
    vae.register_to_config(scaling_factor=1.0 / spread)


def pretrain(model: LoadedModel, latents: torch.Tensor, prompt: str, *, seed: int) -> None:
    """Plain full fine-tuning of the UNet and the text encoder on (latents, prompt)."""
    import torch.nn.functional as F

    unet, text_encoder = model.denoiser, model.text_encoders[0]
    unet.train().requires_grad_(True)
    text_encoder.train().requires_grad_(True)
    optimizer = torch.optim.AdamW([*unet.parameters(), *text_encoder.parameters()], lr=PRETRAIN_LR)
    scheduler = model.objective.scheduler
    rng = torch.Generator().manual_seed(seed)
    token_ids = model.family.tokenize(model, [prompt] * len(latents))
    for _ in range(PRETRAIN_STEPS):
        noise = torch.randn(latents.shape, generator=rng)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(latents),), generator=rng)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        prediction = model.family.predict(model, noisy, timesteps, model.family.encode(model, token_ids))
        F.mse_loss(prediction, noise).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def build_base_model(folder: Path, class_paths: list[Path], instance_paths: list[Path], seed: int) -> Path:
    """A tiny SD 1.x diffusers folder whose model has learned `class_paths` as "bear"."""
    from engine.tiny import build_tiny_sd1_pipeline

    build_tiny_sd1_pipeline(folder, seed=seed)
    model = load_base_model(folder)
    calibrate_vae(model.vae, torch.stack([image_tensor(p, (SIZE, SIZE)) for p in (*class_paths, *instance_paths)]))
    pretrain(model, encode_latents(model, class_paths), CLASS_PROMPT, seed=seed)
    model.denoiser.save_pretrained(folder / "unet")
    model.vae.save_pretrained(folder / "vae")
    model.text_encoders[0].save_pretrained(folder / "text_encoder")
    return folder


# --- LoRA training with the engine --------------------------------------------------------------


def train_lora(folder: Path, base: Path, train_dir: Path, reg_dir: Path | None, seed: int) -> LoadedModel:
    """Train one epoch with the engine; the base model with the trained LoRA layers in it."""
    answers_path = write_answers(
        folder,
        base,
        train_dir,
        reg_dir,
        network={"dim": LORA["dim"], "alpha": LORA["dim"]},
        training={"batch_size": LORA["batch_size"], "unet_lr": LORA["lr"], "text_encoder_lr": LORA["lr"], "seed": seed},
    )
    answers = load_answers(answers_path)
    # One whole epoch rather than write_answers' max_steps: regularization images double an epoch's
    # steps, so both runs see every instance image equally often, as kohya's epochs do.
    answers.training.epochs = 1
    answers.training.max_steps = None
    trainer = Trainer(plan_training(answers), EventLog(None))
    trainer.setup()
    trainer.run()
    unwrap = trainer.accelerator.unwrap_model
    return dataclasses.replace(
        trainer.model, denoiser=unwrap(trainer.model.denoiser), text_encoders=[unwrap(e) for e in trainer.model.text_encoders]
    )


# --- measuring ----------------------------------------------------------------------------------


def encode_latents(model: LoadedModel, paths: list[Path]) -> torch.Tensor:
    return torch.stack([encode_image(model, image_tensor(p, (SIZE, SIZE)), mode="mean", sample_generator=None) for p in paths])


def eval_pairs(latent_shape: torch.Size, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed (noise, timestep) pairs; the timesteps spread evenly over [100, 900]."""
    noise = torch.randn((EVAL_PAIRS, *latent_shape), generator=torch.Generator().manual_seed(seed))
    return noise, torch.linspace(100, 900, EVAL_PAIRS).round().long()


def denoising_loss(model: LoadedModel, latents: torch.Tensor, prompt: str, pairs: tuple[torch.Tensor, torch.Tensor]) -> float:
    """Noise-prediction MSE of `model` with `prompt`, averaged over the images and the fixed pairs."""
    noise, timesteps = pairs
    model.denoiser.eval()
    model.text_encoders[0].eval()
    total = 0.0
    with torch.no_grad():
        conditioning = model.family.encode(model, model.family.tokenize(model, [prompt] * len(noise)))
        for latent in latents:
            noisy = model.objective.scheduler.add_noise(latent.expand_as(noise), noise, timesteps)
            prediction = model.family.predict(model, noisy, timesteps, conditioning)
            total += torch.nn.functional.mse_loss(prediction, noise).item()
    return total / len(latents)


@dataclass(frozen=True)
class Losses:
    instance: float  # "usu bear" on the instance (training) images
    class_prompt: float  # "bear" on the class (regularization) images


@dataclass(frozen=True)
class Outcome:
    base: Losses
    without_reg: Losses
    with_reg: Losses

    def summary(self) -> str:
        rows = [(name, getattr(self, name)) for name in ("base", "without_reg", "with_reg")]
        return "; ".join(f"{name}: instance {m.instance:.4f}, class {m.class_prompt:.4f}" for name, m in rows)


def dreambooth_experiment(root: Path, seed: int) -> Outcome:
    """Build the base model, train without and with regularization images, measure all three."""
    rng = random.Random(seed)
    class_paths = write_concept(root / "reg" / f"1_{CLASS_PROMPT}", [draw_class_image(rng) for _ in range(CLASS_IMAGES)])
    instance_folder = root / "train" / f"{INSTANCE_REPEATS}_{INSTANCE_PROMPT}"
    instance_paths = write_concept(instance_folder, [draw_instance_image(rng) for _ in range(INSTANCE_IMAGES)])
    base = load_base_model(build_base_model(root / "base", class_paths, instance_paths, seed))

    # The VAE is frozen in LoRA training: the base model's latents are every model's latents.
    instance_latents = encode_latents(base, instance_paths)
    class_latents = encode_latents(base, class_paths)
    pairs = eval_pairs(instance_latents.shape[1:], seed)

    def measure(model: LoadedModel) -> Losses:
        return Losses(
            instance=denoising_loss(model, instance_latents, INSTANCE_PROMPT, pairs),
            class_prompt=denoising_loss(model, class_latents, CLASS_PROMPT, pairs),
        )

    return Outcome(
        base=measure(base),
        without_reg=measure(train_lora(root / "without-reg", base.source, root / "train", None, seed)),
        with_reg=measure(train_lora(root / "with-reg", base.source, root / "train", root / "reg", seed)),
    )


@pytest.fixture(scope="module")
def outcome(tmp_path_factory) -> Outcome:
    return dreambooth_experiment(tmp_path_factory.mktemp("dreambooth"), SEED)


# --- the article's claims -----------------------------------------------------------------------
# Observed with this module's settings for seeds 0..5 (SEED is 0; each seed builds its own images,
# base model and LoRAs), against the bounds the tests use:
#   base "bear" loss / base "usu bear" loss      0.37 0.42 0.31 0.35 0.32 0.30   bound <= 0.6
#   "usu bear" after / base, without reg images  0.69 0.73 0.68 0.74 0.69 0.68   bound <= 0.8
#   "usu bear" after / base, with reg images     0.67 0.69 0.63 0.71 0.66 0.67   bound <= 0.8
#   "bear" after / base, without reg images      1.41 1.48 1.68 1.65 1.63 1.63   bound >= 1.15
#   |"bear" drift| with / drift without          0.12 0.13 0.20 0.01 0.09 0.12   bound <= 0.5
# (one CPU thread; with two, seed 0 gives 0.37 0.69 0.67 1.42 0.09). With the regularization images
# but `dataset.prior_loss_weight = 0`, seed 0's last ratio is 1.30: the preservation test fails then.


def test_the_base_model_knows_the_class_and_not_the_subject(outcome):
    """The premise: before training, "bear" denoises the class images far better than "usu bear" the subject."""
    assert outcome.base.class_prompt <= 0.6 * outcome.base.instance, outcome.summary()


@pytest.mark.parametrize("run", ["without_reg", "with_reg"])
def test_the_instance_prompt_learns_the_subject(outcome, run):
    trained = getattr(outcome, run)
    assert trained.instance <= 0.8 * outcome.base.instance, outcome.summary()


def test_without_regularization_the_class_drifts(outcome):
    """Training `usu bear` alone also changes what `bear` means: what regularization images are for."""
    assert outcome.without_reg.class_prompt >= 1.15 * outcome.base.class_prompt, outcome.summary()


def test_regularization_images_preserve_the_class(outcome):
    """Prior preservation: with the class images as regularization, "bear" stays near the base model."""
    drift_without = outcome.without_reg.class_prompt - outcome.base.class_prompt
    drift_with = abs(outcome.with_reg.class_prompt - outcome.base.class_prompt)
    assert drift_with <= 0.5 * drift_without, outcome.summary()
