"""`lora-wizard check [ANSWERS_FILE] [--json]`: is this machine ready to train, and with what?

Prints every check as ok / warn / FAIL with a one-line remedy, the settings that fit the machine
(the wizard's defaults) and an estimate of VRAM and time. With an answers file it also checks
that run's model, dataset, output folder and estimate. `--json` prints the same as one JSON
document (docs/check-json.md).

Exit status: 0 when nothing failed (warnings, such as no GPU, included), 1 when a check failed,
2 when the answers file itself is not valid.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

    from engine.checks.report import CheckReport

GROUP_TITLES = {"system": "System", "gpu": "NVIDIA GPUs", "packages": "Packages", "run": "This run"}
MARKERS = {"ok": "[green]ok  [/]", "warn": "[yellow]warn[/]", "fail": "[bold red]FAIL[/]"}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "check",
        help="check the environment (Python, torch, GPU, memory, disk) and estimate a run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("answers_file", nargs="?", type=Path, metavar="ANSWERS_FILE", help="also check the run this answers file describes")
    parser.add_argument("--json", action="store_true", help="print one JSON document (schema: docs/check-json.md)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from engine.checks import run_checks
    from engine.config import load_answers

    # Paths are not required to exist here: a missing model or folder is reported as a check.
    answers = load_answers(args.answers_file, check_paths=False) if args.answers_file else None
    report = run_checks(answers, answers_file=args.answers_file)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print_report(report)
    return report.exit_code


def print_report(report: CheckReport, console: Console | None = None) -> None:
    from rich.console import Console
    from rich.markup import escape

    console = console or Console(highlight=False, soft_wrap=True)
    facts = report.facts
    console.print(f"[bold]lora-wizard check[/] · {facts.platform} · Python {'.'.join(map(str, facts.python_version))}")
    width = max(len(item.title) for item in report.items)
    for group, title in GROUP_TITLES.items():
        items = [item for item in report.items if item.group == group]
        if not items:
            continue
        heading = f"{title} ({report.answers_file})" if group == "run" and report.answers_file else title
        console.print(f"\n[bold]{escape(heading)}[/]")
        for item in items:
            console.print(f"  {MARKERS[item.status]}  {escape(item.title):<{width}}  {escape(item.summary)}")
            if item.remedy:
                console.print(f"  {'':4}  {'':<{width}}  [dim]→ {escape(item.remedy)}[/]")
    _print_recommendations(report, console)
    _print_estimate(report, console)
    fails = sum(item.status == "fail" for item in report.items)
    warns = sum(item.status == "warn" for item in report.items)
    warnings = "warning" if warns == 1 else "warnings"
    console.print(f"\nResult: {fails} failed, {warns} {warnings} (exit {report.exit_code})")


def _print_recommendations(report: CheckReport, console: Console) -> None:
    from rich.markup import escape

    rec = report.recommendations
    on_off = {True: "on", False: "off"}
    rows = {
        "device": rec.device_name,
        "batch size": str(rec.batch_size),
        "GPUs (processes)": f"{rec.processes} (effective batch {rec.effective_batch})",
        "optimizer": rec.optimizer,
        "train the text encoder": on_off[rec.train_text_encoder],
        "mixed precision": rec.mixed_precision,
        "gradient checkpointing": on_off[rec.gradient_checkpointing],
        "latent caching": rec.cache_latents,
    }
    console.print("\n[bold]Recommended settings[/] (the wizard's defaults)")
    for name, value in rows.items():
        console.print(f"  {name:<30} {escape(value)}")
    for reason in rec.reasons:
        console.print(f"  [dim]· {escape(reason)}[/]")
    for warning in rec.warnings:
        console.print(f"  [yellow]warn[/] {escape(warning)}")


def _print_estimate(report: CheckReport, console: Console) -> None:
    from rich.markup import escape

    from engine.checks.environment import gib
    from engine.checks.estimate import describe_time

    est = report.estimate
    setup = est.setup
    size = setup.resolution or setup.cost.resolution
    precision = "fp32" if setup.mixed_precision == "no" else setup.mixed_precision
    console.print(f"\n[bold]Estimate[/]: {setup.cost.label}, {size} px, batch {setup.batch_size}, {precision}")
    vram = f"~{gib(est.vram_needed)}" if est.vram_needed is not None else "n/a (not on a GPU)"
    console.print(f"  {'VRAM':<6} {vram}")
    console.print(f"  {'time':<6} {escape(describe_time(est))}")
    console.print(f"  {'basis':<6} {escape(est.basis)}")
    for note in est.notes:
        console.print(f"  [dim]· {escape(note)}[/]")
