"""The whole pre-flight check: the machine, and with an answers file that run's model, dataset,
output folder and estimate. `lora-wizard check` and the wizard's environment screen show this.

`CheckReport.to_dict()` is the `--json` output; docs/check-json.md documents it and a test pins
its keys, so change both together (and bump JSON_SCHEMA_VERSION when a key changes meaning).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from engine.checks.environment import (
    OPTIMIZER_PACKAGES,
    CheckItem,
    MachineFacts,
    Recommendations,
    Status,
    existing_ancestor,
    gather_facts,
    gib,
    machine_items,
    recommend,
    training_device,
    training_gpu,
    usable_vram,
    version_tuple,
    visible_gpus,
    worst,
)
from engine.checks.estimate import FAMILY_COSTS, Estimate, TrainingSetup, estimate
from engine.config import Answers
from engine.devices import captions_vary
from engine.errors import UserError
from engine.plan import check_output_free

JSON_SCHEMA_VERSION = 1
DEFAULT_FAMILY = "sd1"  # the seed article's model, when no answers file names one


@dataclass(frozen=True)
class CheckReport:
    facts: MachineFacts
    items: tuple[CheckItem, ...]
    recommendations: Recommendations
    estimate: Estimate
    answers_file: Path | None = None

    @property
    def status(self) -> Status:
        return worst(self.items)

    @property
    def exit_code(self) -> int:
        """0 when nothing failed (warnings included: a CPU-only machine is not an error), else 1."""
        return 1 if self.status == "fail" else 0

    def to_dict(self) -> dict[str, Any]:
        return report_to_dict(self)


def run_checks(
    answers: Answers | None = None,
    *,
    answers_file: str | Path | None = None,
    facts: MachineFacts | None = None,
    family: str | None = None,
) -> CheckReport:
    """Check the machine, and the run an answers file describes. Problems become items with a
    remedy; nothing here raises for a missing GPU, driver, model or folder. Without answers,
    `family` says which model family the recommendations are for (default SD 1.x); with
    answers, the base model decides."""
    if facts is None:
        facts = gather_facts(answers.output.dir if answers else None)
    if answers is None:
        family = family if family in FAMILY_COSTS else DEFAULT_FAMILY
        recommendations = recommend(facts, family=family)
        setup = _recommended_setup(recommendations, family, None)
        items = machine_items(facts, recommendations)
        return CheckReport(facts, tuple(items), recommendations, estimate(setup, training_device(facts)))
    run_items, family, steps = _model_and_dataset_items(answers)
    recommendations = recommend(
        facts,
        family=family,
        resolution=answers.dataset.resolution,
        network_dim=answers.network.dim,
        train_text_encoder=answers.network.train_text_encoder,
        gradient_accumulation=answers.training.gradient_accumulation,
        captions_vary=captions_vary(answers),
        fp16_safe_vae=answers.model.vae is not None,
    )
    run_estimate = estimate(_answers_setup(answers, family, recommendations), training_device(facts), steps)
    run_items += [
        *_output_items(answers),
        _precision_item(answers, recommendations),
        _optimizer_item(answers, facts),
        _processes_item(run_estimate.setup, facts, recommendations),
        estimate_item(run_estimate, facts),
    ]
    items = machine_items(facts, recommendations) + run_items
    return CheckReport(facts, tuple(items), recommendations, run_estimate, Path(answers_file) if answers_file else None)


# ---------------------------------------------------------------------------------------------
# The run's items


def _model_and_dataset_items(answers: Answers) -> tuple[list[CheckItem], str, int | None]:
    """The base model and dataset items, the model's family, and the run's step count."""
    from engine.families import inspect_base_model

    items = []
    family = DEFAULT_FAMILY
    label = FAMILY_COSTS[family].label
    try:
        info = inspect_base_model(answers.model.path, answers.model.tokenizer)
    except UserError as exc:
        items.append(CheckItem("run.model", "run", "Base model", "fail", exc.message, exc.fix))
        items.append(CheckItem("run.tokenizer", "run", "Tokenizer", "warn", "not checked: the base model is not readable", None))
    else:
        if info.family in FAMILY_COSTS:  # else the estimate falls back to SD 1.x's figures
            family, label = info.family, info.label
        items.append(CheckItem("run.model", "run", "Base model", "ok", f"{info.label}, {info.layout}, predicts {info.prediction}: {answers.model.path}"))
        items.append(_tokenizer_item(info.tokenizer, info.tokenizer_note))
    steps = None
    try:
        from engine.plan import plan_training

        plan = plan_training(answers, family_label=label, default_resolution=FAMILY_COSTS[family].resolution)
    except UserError as exc:
        items.append(CheckItem("run.dataset", "run", "Dataset", "fail", exc.message, exc.fix))
    else:
        steps = plan.total_steps
        reg = f" + {plan.dataset.num_reg_items} regularization" if plan.dataset.reg_concepts else ""
        summary = f"{plan.dataset.num_train_items} training items{reg} per epoch: {steps} steps at batch size {answers.training.batch_size}"
        items.append(CheckItem("run.dataset", "run", "Dataset", "ok", summary))
    return items, family, steps


def _tokenizer_item(folder: Path | None, note: str) -> CheckItem:
    if folder is None:  # `lora-wizard train` stops before training without one
        return CheckItem(
            "run.tokenizer", "run", "Tokenizer", "fail", f"not found offline ({note})",
            "set [model] tokenizer to a folder with vocab.json and merges.txt (a diffusers model's tokenizer/ folder)",
        )
    return CheckItem("run.tokenizer", "run", "Tokenizer", "ok", str(folder))


def _output_items(answers: Answers) -> list[CheckItem]:
    folder = Path(answers.output.dir)
    parent = existing_ancestor(folder)
    items = []
    if not parent.is_dir():
        items.append(CheckItem("run.output", "run", "Output folder", "fail", f"{parent} is a file, not a folder", "choose another [output] dir"))
    elif not os.access(parent, os.W_OK | os.X_OK):
        items.append(CheckItem("run.output", "run", "Output folder", "fail", f"{parent} is not writable", "choose a folder you can write to as [output] dir"))
    else:
        try:
            check_output_free(answers)  # the run refuses to overwrite a LoRA unless told to
        except UserError as exc:
            items.append(CheckItem("run.output", "run", "Output folder", "fail", f"{exc.where}: {exc.message}", exc.fix))
        else:
            created = "" if folder.exists() else " (will be created)"
            items.append(CheckItem("run.output", "run", "Output folder", "ok", f"{folder}{created}"))
    return items


def _precision_item(answers: Answers, recommendations: Recommendations) -> CheckItem:
    chosen = answers.training.mixed_precision
    recommended = recommendations.mixed_precision
    title = "Mixed precision"
    if chosen == "auto":
        return CheckItem("run.precision", "run", title, "ok", f"auto: {recommended} on this machine")
    if recommendations.device == "cpu" and chosen == "fp16":
        return CheckItem("run.precision", "run", title, "fail", "fp16 needs a GPU", "set [training] mixed_precision = \"auto\"")
    if chosen == "bf16" and recommended == "fp16":
        return CheckItem("run.precision", "run", title, "fail", "bf16 needs compute capability 8.0; this GPU has less", "set [training] mixed_precision = \"auto\"")
    if chosen == "no" and recommended != "no":
        return CheckItem("run.precision", "run", title, "warn", "fp32: about 2.2x slower and more VRAM than " + recommended, "set [training] mixed_precision = \"auto\"")
    if chosen != recommended:
        return CheckItem("run.precision", "run", title, "warn", f"{chosen}; {recommended} is recommended here", "set [training] mixed_precision = \"auto\"")
    return CheckItem("run.precision", "run", title, "ok", chosen)


def _optimizer_item(answers: Answers, facts: MachineFacts) -> CheckItem:
    optimizer = answers.training.optimizer
    if optimizer not in OPTIMIZER_PACKAGES:
        return CheckItem("run.optimizer", "run", "Optimizer", "ok", optimizer)
    package, minimum = OPTIMIZER_PACKAGES[optimizer]
    version = facts.packages.get(package)
    if version is None or version_tuple(version) < version_tuple(minimum):
        found = "not installed" if version is None else f"{version} is too old"
        return CheckItem("run.optimizer", "run", "Optimizer", "fail", f"{optimizer} needs {package} ({found})", f"pip install '{package}>={minimum}', or set optimizer = \"adamw\"")
    if optimizer == "adamw8bit" and not facts.torch.cuda_available:
        return CheckItem("run.optimizer", "run", "Optimizer", "fail", "adamw8bit (bitsandbytes) needs a CUDA GPU", "set [training] optimizer = \"adamw\"")
    return CheckItem("run.optimizer", "run", "Optimizer", "ok", f"{optimizer} ({package} {version})")


def _processes_item(setup: TrainingSetup, facts: MachineFacts, recommendations: Recommendations) -> CheckItem:
    """Whether this machine has a GPU for each of the run's processes (`setup`: the answers')."""
    processes = setup.processes
    title = "Processes"
    effective = f"effective batch {setup.batch_size} x {processes} x {setup.gradient_accumulation} = {setup.effective_batch}"
    if recommendations.device in ("cpu", "mps"):
        if processes == 1:
            return CheckItem("run.processes", "run", title, "ok", "1 (no GPU)")
        return CheckItem(
            "run.processes", "run", title, "warn", f"{processes} CPU processes (gloo): {effective}; slower than one, for testing",
            "set [training] processes = 1 on a machine without a GPU",
        )
    gpus = len(visible_gpus(facts))
    if processes > gpus:  # one process per GPU of this machine (several machines: per machine)
        return CheckItem(
            "run.processes", "run", title, "fail", f"{processes} processes, but this machine has {gpus} usable GPU{'s' if gpus != 1 else ''}",
            f"set [training] processes = {recommendations.processes}",
        )
    if processes < recommendations.processes:
        return CheckItem(
            "run.processes", "run", title, "ok",
            f"{processes}; {effective} (processes = {recommendations.processes} would use every GPU like the training GPU)",
        )
    return CheckItem("run.processes", "run", title, "ok", f"{processes}; {effective}")


def estimate_item(run_estimate: Estimate, facts: MachineFacts) -> CheckItem:
    """Whether the run fits in VRAM, and how long it takes."""
    summary = describe_time(run_estimate)
    title = "Estimate"
    gpu = training_gpu(facts)
    if run_estimate.vram_needed is None or gpu is None or not facts.torch.cuda_available:
        status = "warn" if training_device(facts).kind == "cpu" else "ok"
        remedy = "train on a GPU machine (e.g. over SSH) for real runs" if status == "warn" else None
        return CheckItem("run.estimate", "run", title, status, summary, remedy)
    needed = run_estimate.vram_needed
    memory = run_estimate.memory
    sampling_peak = memory is not None and memory.peak_phase == "sampling"
    phase = f" (making samples; training ~{gib(memory.training)})" if sampling_peak else ""
    summary = f"~{gib(needed)} VRAM of {gib(gpu.vram_total)}{phase}; {summary}"
    if needed <= usable_vram(gpu):
        return CheckItem("run.estimate", "run", title, "ok", summary)
    spill = "Windows spills to RAM and runs 10-100x slower (kohya_ss#1730)" if facts.platform == "win32" else "expect out of memory"
    # The samples' remedy only when training alone fits: otherwise the batch size comes first.
    samples_alone = sampling_peak and memory.training <= usable_vram(gpu)
    remedy = SAMPLING_REMEDY if samples_alone else training_memory_remedy(run_estimate.setup)
    if needed <= gpu.vram_total:
        return CheckItem("run.estimate", "run", title, "warn", summary + ": tight", remedy)
    return CheckItem("run.estimate", "run", title, "fail", summary + f": does not fit, {spill}", remedy)


def training_memory_remedy(setup: TrainingSetup) -> str:
    """The memory savings this run does not use yet, the cheapest first; a smaller resolution last."""
    savings = []
    if setup.batch_size > 1:
        savings.append("lower [training] batch_size")
    if not setup.cache_latents:
        savings.append('cache the latents ([training] cache_latents = "memory")')
    if not setup.gradient_checkpointing:
        savings.append("set [training] gradient_checkpointing = true")
    if setup.train_text_encoder:
        savings.append("train the UNet only ([network] train_text_encoder = false)")
    elif setup.captions_vary:
        savings.append("keep the captions fixed (no shuffle_tags or caption_dropout): the text encoders then wait in RAM")
    if setup.optimizer == "adamw":
        savings.append('set [training] optimizer = "adamw8bit" (bitsandbytes, NVIDIA)')
    savings.append("lower [dataset] resolution, or train on a GPU with more memory")
    return "; ".join(savings)


# What lowers the sampling peak: the VAE's decoding, not the batch size.
SAMPLING_REMEDY = (
    "make the samples smaller (--w / --h in [samples] prompts) or fewer, set [model] vae to an fp16-safe VAE "
    "(half the decoding memory), or turn samples off (every_steps = 0, every_epochs = 0) and use `lora-wizard generate` after"
)


def _recommended_setup(recommendations: Recommendations, family: str, resolution: int | None) -> TrainingSetup:
    return TrainingSetup(
        family=family,
        resolution=resolution,
        batch_size=recommendations.batch_size,
        mixed_precision=recommendations.mixed_precision,
        gradient_checkpointing=recommendations.gradient_checkpointing,
        cache_latents=True,
        train_text_encoder=recommendations.train_text_encoder,
        optimizer=recommendations.optimizer,
        processes=recommendations.processes,
    )


def _answers_setup(answers: Answers, family: str, recommendations: Recommendations) -> TrainingSetup:
    """The answers' settings; where the answers leave a choice to the machine, the recommendation."""
    training = answers.training
    setup = _recommended_setup(recommendations, family, answers.dataset.resolution)
    return replace(
        setup,
        batch_size=training.batch_size,
        gradient_accumulation=training.gradient_accumulation,
        mixed_precision=recommendations.mixed_precision if training.mixed_precision == "auto" else training.mixed_precision,
        gradient_checkpointing=training.gradient_checkpointing,
        cache_latents=training.cache_latents != "off",
        network_dim=answers.network.dim,
        train_text_encoder=answers.network.train_text_encoder,
        optimizer=training.optimizer,
        processes=training.processes,
        captions_vary=captions_vary(answers),
        fp16_safe_vae=answers.model.vae is not None,
        samples=answers.samples.enabled,
    )


# ---------------------------------------------------------------------------------------------
# Words and JSON


def format_duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    minutes = seconds / 60
    if minutes < 120:
        return f"{minutes:.0f} min"
    hours, minutes = divmod(round(minutes), 60)
    return f"{hours} h {minutes:02d} min" if hours < 48 else f"{hours / 24:.1f} days"


def describe_time(run_estimate: Estimate) -> str:
    """`"~0.31 s/step, 1,500 steps ~ 8 min"`, or why there is no time."""
    if run_estimate.seconds_per_step is None:
        return run_estimate.basis
    text = f"~{format_duration(run_estimate.seconds_per_step)}/step"
    total = run_estimate.total_seconds
    if total is not None:
        return text + f", {run_estimate.steps:,} steps ~ {format_duration(total)}"
    return text + f", 1,000 steps ~ {format_duration(run_estimate.seconds_per_step * 1000)}"


def report_to_dict(report: CheckReport) -> dict[str, Any]:
    """The `--json` document (docs/check-json.md)."""
    facts, rec, est = report.facts, report.recommendations, report.estimate
    return {
        "schema_version": JSON_SCHEMA_VERSION,
        "status": report.status,
        "answers_file": str(report.answers_file) if report.answers_file else None,
        "items": [
            {"id": i.id, "group": i.group, "title": i.title, "status": i.status, "summary": i.summary, "remedy": i.remedy}
            for i in report.items
        ],
        "machine": _machine_dict(facts),
        "recommendations": {
            "device": rec.device,
            "device_name": rec.device_name,
            "batch_size": rec.batch_size,
            "mixed_precision": rec.mixed_precision,
            "gradient_checkpointing": rec.gradient_checkpointing,
            "half_precision_frozen_weights": rec.half_precision_frozen_weights,
            "cache_latents": rec.cache_latents,
            "fits_in_vram": rec.fits,
            "ram_swap_needed_bytes": rec.ram_swap_needed,
            "family": rec.family,
            "processes": rec.processes,
            "process_gpus": list(rec.process_gpus),
            "effective_batch_size": rec.effective_batch,
            "optimizer": rec.optimizer,
            "train_text_encoder": rec.train_text_encoder,
            "answers_defaults": rec.answers_defaults(),
            "reasons": list(rec.reasons),
            "warnings": list(rec.warnings),
        },
        "estimate": {
            "family": est.setup.family,
            "resolution": est.setup.resolution or est.setup.cost.resolution,
            "batch_size": est.setup.batch_size,
            "gradient_accumulation": est.setup.gradient_accumulation,
            "processes": est.setup.processes,
            "effective_batch_size": est.setup.effective_batch,
            "optimizer": est.setup.optimizer,
            "train_text_encoder": est.setup.train_text_encoder,
            "mixed_precision": est.setup.mixed_precision,
            "gradient_checkpointing": est.setup.gradient_checkpointing,
            "half_precision_frozen_weights": est.setup.half_precision_frozen_weights,
            "cache_latents": est.setup.cache_latents,
            "vram_needed_bytes": est.vram_needed,
            "vram_caching_bytes": est.memory.caching if est.memory else None,
            "vram_training_bytes": est.memory.training if est.memory else None,
            "vram_sampling_bytes": est.memory.sampling if est.memory else None,
            "parked_parts": sorted(est.setup.parked_parts),
            "fp16_safe_vae": est.setup.fp16_safe_vae,
            "samples": est.setup.samples,
            "seconds_per_step": est.seconds_per_step,
            "steps": est.steps,
            "total_seconds": est.total_seconds,
            "basis": est.basis,
            "notes": list(est.notes),
        },
    }


def _machine_dict(facts: MachineFacts) -> dict[str, Any]:
    torch, driver = facts.torch, facts.driver
    return {
        "python": ".".join(map(str, facts.python_version)),
        "platform": facts.platform,
        "torch": {
            "version": torch.version,
            "build": torch.build,
            "cuda_version": torch.cuda_version,
            "hip_version": torch.hip_version,
            "cuda_available": torch.cuda_available,
            "mps_available": torch.mps_available,
            "error": torch.error,
        },
        "nvidia_driver": {"status": driver.status, "version": driver.version, "cuda_version": driver.cuda_version, "error": driver.error},
        "gpus": [
            {
                "index": gpu.index,
                "name": gpu.name,
                "vram_total_bytes": gpu.vram_total,
                "vram_free_bytes": gpu.vram_free,
                "compute_capability": ".".join(map(str, gpu.compute_capability)) if gpu.compute_capability else None,
                "bf16": gpu.supports_bf16,
            }
            for gpu in facts.gpus
        ],
        "cpu_cores": facts.cpu_cores,
        "ram_total_bytes": facts.ram_total,
        "ram_available_bytes": facts.ram_available,
        "swap_total_bytes": facts.swap_total,
        "swap_free_bytes": facts.swap_free,
        "disk": {"path": str(facts.disk_path), "free_bytes": facts.disk_free},
        "packages": dict(facts.packages),
    }
