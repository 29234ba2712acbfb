"""The whole pre-flight check: the machine, and with an answers file that run's model, dataset,
output folder and estimate. `lora-wizard check` and the wizard's environment screen show this.

`CheckReport.to_dict()` is the `--json` output; docs/check-json.md documents it and a test pins
its keys, so change both together (and bump JSON_SCHEMA_VERSION when a key changes meaning).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.checks.costs import FAMILY_COSTS
from engine.checks.environment import MachineFacts, gather_facts
from engine.checks.estimate import Estimate, estimate
from engine.checks.items import CheckItem, Status, worst
from engine.checks.machine_items import machine_items
from engine.checks.recommend import Recommendations, recommend, training_device
from engine.checks.run_items import (
    DEFAULT_FAMILY,
    answers_setup,
    estimate_item,
    model_and_dataset_items,
    optimizer_item,
    output_items,
    precision_item,
    processes_item,
    recommended_setup,
)
from engine.config import Answers
from engine.parking import captions_vary

JSON_SCHEMA_VERSION = 1


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
        setup = recommended_setup(recommendations, family, None)
        items = machine_items(facts, recommendations)
        return CheckReport(facts, tuple(items), recommendations, estimate(setup, training_device(facts)))
    run_items, family, steps = model_and_dataset_items(answers)
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
    run_estimate = estimate(answers_setup(answers, family, recommendations), training_device(facts), steps)
    run_items += [
        *output_items(answers),
        precision_item(answers, recommendations),
        optimizer_item(answers, facts),
        processes_item(run_estimate.setup, facts, recommendations),
        estimate_item(run_estimate, facts),
    ]
    items = machine_items(facts, recommendations) + run_items
    return CheckReport(facts, tuple(items), recommendations, run_estimate, Path(answers_file) if answers_file else None)


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
        "cpu_usable": facts.cpu_usable,
        "cpu_busy": facts.cpu_busy,
        "ram_total_bytes": facts.ram_total,
        "ram_available_bytes": facts.ram_available,
        "swap_total_bytes": facts.swap_total,
        "swap_free_bytes": facts.swap_free,
        "disk": {"path": str(facts.disk_path), "free_bytes": facts.disk_free},
        "packages": dict(facts.packages),
    }
