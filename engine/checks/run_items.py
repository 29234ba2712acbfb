"""The checks of the run an answers file describes: its base model and tokenizer, dataset, output
folder, precision, optimizer, processes, and whether its estimate fits the machine.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from engine.checks.costs import FAMILY_COSTS
from engine.checks.environment import OPTIMIZER_PACKAGES, MachineFacts, existing_ancestor, gib, version_tuple
from engine.checks.estimate import Estimate, TrainingSetup, describe_time
from engine.checks.items import CheckItem
from engine.checks.recommend import Recommendations, training_device, training_gpu, usable_vram, visible_gpus
from engine.config import Answers
from engine.errors import UserError
from engine.messages import Message
from engine.parking import captions_vary
from engine.plan import check_output_free

BASE_MODEL = Message("check.model.title", "Base model")
TOKENIZER = Message("check.tokenizer.title", "Tokenizer")
DATASET = Message("check.dataset.title", "Dataset")
OUTPUT_FOLDER = Message("check.output.title", "Output folder")
OPTIMIZER = Message("check.optimizer.title", "Optimizer")
AUTO_PRECISION_FIX = Message("check.precision.auto.fix", "set [training] mixed_precision = \"auto\"")

DEFAULT_FAMILY = "sd1"  # the seed article's model, when no answers file names one


def model_and_dataset_items(answers: Answers) -> tuple[list[CheckItem], str, int | None]:
    """The base model and dataset items, the model's family, and the run's step count."""
    from engine.families import inspect_base_model
    from engine.families.flux import flux_options

    items = []
    family = DEFAULT_FAMILY
    label = FAMILY_COSTS[family].label
    try:
        info = inspect_base_model(answers.model.path, answers.model.tokenizer, flux=flux_options(answers.model, answers.training))
    except UserError as exc:
        items.append(CheckItem("run.model", "run", BASE_MODEL, "fail", exc.message, exc.fix))
        items.append(CheckItem("run.tokenizer", "run", TOKENIZER, "warn", "not checked: the base model is not readable", None))
    else:
        if info.family in FAMILY_COSTS:  # every family inspect_base_model names has figures
            family, label = info.family, info.label
        items.append(CheckItem("run.model", "run", BASE_MODEL, "ok", f"{info.label}, {info.layout}, predicts {info.prediction}: {answers.model.path}"))
        items.append(_tokenizer_item(info.tokenizer, info.tokenizer_note))
    steps = None
    try:
        from engine.plan import plan_training

        plan = plan_training(answers, family_label=label, default_resolution=FAMILY_COSTS[family].resolution)
    except UserError as exc:
        items.append(CheckItem("run.dataset", "run", DATASET, "fail", exc.message, exc.fix))
    else:
        steps = plan.total_steps
        reg = f" + {plan.dataset.num_reg_items} regularization" if plan.dataset.reg_concepts else ""
        summary = f"{plan.dataset.num_train_items} training items{reg} per epoch: {steps} steps at batch size {answers.training.batch_size}"
        items.append(CheckItem("run.dataset", "run", DATASET, "ok", summary))
    return items, family, steps


def _tokenizer_item(folder: Path | None, note: str) -> CheckItem:
    if folder is None:  # `lora-wizard train` stops before training without one
        return CheckItem(
            "run.tokenizer", "run", TOKENIZER, "fail", f"not found offline ({note})",
            "set [model] tokenizer to a folder with vocab.json and merges.txt (a diffusers model's tokenizer/ folder)",
        )
    return CheckItem("run.tokenizer", "run", TOKENIZER, "ok", str(folder))


def output_items(answers: Answers) -> list[CheckItem]:
    folder = Path(answers.output.dir)
    parent = existing_ancestor(folder)
    items = []
    if not parent.is_dir():
        items.append(CheckItem("run.output", "run", OUTPUT_FOLDER, "fail", f"{parent} is a file, not a folder", "choose another [output] dir"))
    elif not os.access(parent, os.W_OK | os.X_OK):
        items.append(CheckItem("run.output", "run", OUTPUT_FOLDER, "fail", f"{parent} is not writable", "choose a folder you can write to as [output] dir"))
    else:
        try:
            check_output_free(answers)  # the run refuses to overwrite a LoRA unless told to
        except UserError as exc:
            items.append(CheckItem("run.output", "run", OUTPUT_FOLDER, "fail", f"{exc.where}: {exc.message}", exc.fix, key=exc.key))
        else:
            created = "" if folder.exists() else " (will be created)"
            items.append(CheckItem("run.output", "run", OUTPUT_FOLDER, "ok", f"{folder}{created}"))
    return items


def precision_item(answers: Answers, recommendations: Recommendations) -> CheckItem:
    chosen = answers.training.mixed_precision
    recommended = recommendations.mixed_precision
    title = Message("check.precision.title", "Mixed precision")
    if chosen == "auto":
        return CheckItem("run.precision", "run", title, "ok", Message("check.precision.auto", "auto: {recommended} on this machine", recommended=recommended))
    if recommendations.device == "cpu" and chosen == "fp16":
        return CheckItem("run.precision", "run", title, "fail", Message("check.precision.fp16_cpu", "fp16 needs a GPU"), AUTO_PRECISION_FIX)
    if chosen == "bf16" and recommended == "fp16":
        return CheckItem("run.precision", "run", title, "fail", Message("check.precision.bf16_old_gpu", "bf16 needs compute capability 8.0; this GPU has less"), AUTO_PRECISION_FIX)
    if chosen == "no" and recommended != "no":
        return CheckItem("run.precision", "run", title, "warn", Message("check.precision.fp32", "fp32: about 2.2x slower and more VRAM than {recommended}", recommended=recommended), AUTO_PRECISION_FIX)
    if chosen != recommended:
        return CheckItem("run.precision", "run", title, "warn", Message("check.precision.other", "{chosen}; {recommended} is recommended here", chosen=chosen, recommended=recommended), AUTO_PRECISION_FIX)
    return CheckItem("run.precision", "run", title, "ok", chosen)


def optimizer_item(answers: Answers, facts: MachineFacts) -> CheckItem:
    optimizer = answers.training.optimizer
    if optimizer not in OPTIMIZER_PACKAGES:
        return CheckItem("run.optimizer", "run", OPTIMIZER, "ok", optimizer)
    package, minimum = OPTIMIZER_PACKAGES[optimizer]
    version = facts.packages.get(package)
    if version is None or version_tuple(version) < version_tuple(minimum):
        found = "not installed" if version is None else f"{version} is too old"
        return CheckItem("run.optimizer", "run", OPTIMIZER, "fail", f"{optimizer} needs {package} ({found})", f"pip install '{package}>={minimum}', or set optimizer = \"adamw\"")
    if optimizer == "adamw8bit" and not facts.torch.cuda_available:
        return CheckItem("run.optimizer", "run", OPTIMIZER, "fail", "adamw8bit (bitsandbytes) needs a CUDA GPU", "set [training] optimizer = \"adamw\"")
    return CheckItem("run.optimizer", "run", OPTIMIZER, "ok", f"{optimizer} ({package} {version})")


def processes_item(setup: TrainingSetup, facts: MachineFacts, recommendations: Recommendations) -> CheckItem:
    """Whether this machine has a GPU for each of the run's processes (`setup`: the answers')."""
    processes = setup.processes
    title = Message("check.processes.title", "Processes")
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
    title = Message("check.estimate.title", "Estimate")
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


def recommended_setup(recommendations: Recommendations, family: str, resolution: int | None) -> TrainingSetup:
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


def answers_setup(answers: Answers, family: str, recommendations: Recommendations) -> TrainingSetup:
    """The answers' settings; where the answers leave a choice to the machine, the recommendation."""
    training = answers.training
    setup = recommended_setup(recommendations, family, answers.dataset.resolution)
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
        fp8_base=training.fp8_base,
        offload_blocks=training.offload_blocks,
    )
