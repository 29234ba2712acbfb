"""The training plan: kohya's step arithmetic and the settings in force, known before torch loads.

    items per epoch   = training images x repeats  (+ the same number of regularization images)
    batches per epoch = ceil(items per epoch / (batch size x processes)), per bucket
    steps per epoch   = ceil(batches per epoch / gradient accumulation)
    total steps       = steps per epoch x epochs   (or [training] max_steps)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from engine.buckets import Size, assign_buckets, batch_count
from engine.config import Answers, NetworkSection
from engine.dataset import DatasetPlan, plan_dataset
from engine.prompts import prompts_from_answers


@dataclass(frozen=True)
class TrainingPlan:
    answers: Answers
    dataset: DatasetPlan
    resolution: int
    family_label: str
    sizes: dict[Path, Size]  # the training size (bucket) of each image
    denoiser_label: str = "UNet"  # the family's denoiser, for people: "UNet" or "transformer"

    @property
    def batches_per_epoch(self) -> int:
        """Every batch comes from one bucket, so each bucket's last batch may be short."""
        sizes = [self.sizes[e.path] for e in self.dataset.epoch_examples()]
        return batch_count(sizes, self.global_batch)

    @property
    def global_batch(self) -> int:
        """Images per batch over all processes (kohya: batch size x processes)."""
        return self.answers.training.batch_size * self.answers.training.processes

    def bucket_counts(self) -> dict[Size, int]:
        counts: dict[Size, int] = {}
        for example in self.dataset.epoch_examples():
            size = self.sizes[example.path]
            counts[size] = counts.get(size, 0) + 1
        return dict(sorted(counts.items()))

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.batches_per_epoch / self.answers.training.gradient_accumulation)

    @property
    def total_steps(self) -> int:
        training = self.answers.training
        return training.max_steps or self.steps_per_epoch * training.epochs

    @property
    def epochs(self) -> int:
        return math.ceil(self.total_steps / self.steps_per_epoch)

    def breakdown(self) -> list[str]:
        """The step arithmetic, line by line, as printed before training."""
        training = self.answers.training
        lines = []
        for concept in self.dataset.concepts:
            lines.append(f"  {concept.folder.name}: {len(concept.examples)} images x {concept.repeats} repeats = {len(concept.examples) * concept.repeats}")
        lines.append(f"training items per epoch: {self.dataset.num_train_items}")
        if self.dataset.reg_concepts:
            reg_images = len(self.dataset.reg_examples)
            lines.append(f"regularization items per epoch: {self.dataset.num_reg_items} (from {reg_images} images, repeated or cut to match)")
        buckets = self.bucket_counts()
        batch = f"batch size {training.batch_size}" + (f" x {training.processes} processes" if training.processes > 1 else "")
        if len(buckets) == 1:
            lines.append(f"batches per epoch: ceil({self.dataset.items_per_epoch} / {batch}) = {self.batches_per_epoch}")
        else:
            parts = " + ".join(f"ceil({n}/{self.global_batch})" for n in buckets.values())
            lines.append(f"buckets: {', '.join(f'{w}x{h}: {n}' for (w, h), n in buckets.items())}")
            lines.append(f"batches per epoch (one bucket per batch): {parts} = {self.batches_per_epoch}")
        if training.gradient_accumulation > 1:
            lines.append(f"steps per epoch: ceil({self.batches_per_epoch} / accumulation {training.gradient_accumulation}) = {self.steps_per_epoch}")
        if training.max_steps:
            lines.append(f"total steps: max_steps = {self.total_steps} ({self.epochs} epochs)")
        else:
            lines.append(f"total steps: {self.steps_per_epoch} x {training.epochs} epochs = {self.total_steps}")
        return lines

    def settings(self) -> dict[str, object]:
        """The settings in force, for the plan printout and the `plan` event."""
        a = self.answers
        return {
            "model": str(a.model.path),
            "family": self.family_label,
            "resolution": self.resolution,
            "network": network_summary(a.network)
            + (", text encoder too" if a.network.train_text_encoder else f", {self.denoiser_label} only"),
            "optimizer": f"{a.training.optimizer}, {self.denoiser_label} lr {a.training.unet_lr:g}"
            + (f", text encoder lr {a.training.text_encoder_lr:g}" if a.network.train_text_encoder else ""),
            "scheduler": f"{a.training.lr_scheduler}, warmup {a.training.warmup_steps}",
            "precision": a.training.mixed_precision,
            **({"vae": str(a.model.vae)} if a.model.vae else {}),
            **({"compile": f"torch.compile the {self.denoiser_label} (the first step compiles)"} if a.training.compile else {}),
            "latents": f"cache {a.training.cache_latents} ({a.training.latents})",
            "seed": a.training.seed,
            "output": str(a.lora_path),
        }


def plan_training(
    answers: Answers, *, family_label: str = "SD 1.x", default_resolution: int = 512, denoiser_label: str = "UNet"
) -> TrainingPlan:
    dataset = plan_dataset(answers.dataset.train_dir, answers.dataset.reg_dir, caption_extension=answers.dataset.caption_extension)
    resolution = answers.dataset.resolution or default_resolution
    images = (e.path for e in (*dataset.train_examples, *dataset.reg_examples))
    sizes = assign_buckets(images, resolution, answers.dataset.bucket_settings)
    return TrainingPlan(
        answers=answers, dataset=dataset, resolution=resolution, family_label=family_label, sizes=sizes, denoiser_label=denoiser_label
    )


def prepare_plan(answers: Answers, *, for_resume: bool = False) -> TrainingPlan:
    """Everything checked before torch loads: the model files, the dataset (each image decoded
    once), the output. Raises a `UserError` naming the problem."""
    from engine.dataset import open_image
    from engine.errors import ModelFileError
    from engine.families import inspect_base_model
    from engine.families.flux import flux_options
    from engine.families.registry import FAMILIES

    if not for_resume:
        check_output_free(answers)
    if answers.output.tensorboard:
        from engine.tensorboard import check_tensorboard_installed

        check_tensorboard_installed()
    info = inspect_base_model(answers.model.path, tokenizer=answers.model.tokenizer, flux=flux_options(answers.model, answers.training))
    if answers.model.vae:
        from engine.families.vae import check_vae_path

        check_vae_path(answers.model.vae)
    if info.tokenizer is None:
        raise ModelFileError(
            f"no tokenizer found for this model: {info.tokenizer_note}",
            where=info.source,
            fix="set `[model] tokenizer` to a folder holding vocab.json and merges.txt",
        )
    family = FAMILIES[info.family]
    plan = plan_training(answers, family_label=info.label, default_resolution=family.default_resolution, denoiser_label=family.denoiser_label)
    if info.family.startswith("flux1"):
        from engine.families.flux import check_flux_answers

        check_flux_answers(answers, plan.resolution)
    if answers.samples.enabled:
        prompts_from_answers(answers.samples, plan.resolution)  # a bad prompt file fails now, not at the first sample
    for image in dict.fromkeys(e.path for e in (*plan.dataset.train_examples, *plan.dataset.reg_examples)):
        open_image(image)
    return plan


def check_output_free(answers: Answers) -> None:
    """Refuse before any work when the LoRA file exists and overwriting was not asked for."""
    from engine.errors import UserError

    if answers.lora_path.exists() and not answers.output.overwrite:
        raise UserError(
            "a LoRA with this name already exists and would be overwritten",
            where=answers.lora_path,
            fix="choose another `[output] name`, or set `[output] overwrite = true`",
            key="output.name",
        )


NETWORK_LABELS = {"lora": "LoRA", "locon": "LoCon", "loha": "LoHa", "lokr": "LoKr"}


def network_summary(network: NetworkSection) -> str:
    """"LoRA dim 8, alpha 8", with the type's own settings for the others ("LoKr dim 8, alpha 8, factor -1")."""
    parts = [f"{NETWORK_LABELS[network.type]}{' + DoRA' if network.dora else ''} dim {network.dim}, alpha {network.effective_alpha:g}"]
    if network.type != "lora":
        parts.append(f"conv dim {network.effective_conv_dim}, conv alpha {network.effective_conv_alpha:g}")
    if network.type == "lokr":
        parts.append(f"factor {-1 if network.factor is None else network.factor}" + (", full matrix" if network.full_matrix else ""))
    return ", ".join(parts)
