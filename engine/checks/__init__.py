"""Pre-flight checks: the machine (Python, torch, GPUs, memory, disk, packages), settings that fit
it, and an estimate of a run's VRAM and time. Nothing here imports torch at module level.

    from engine.checks import run_checks
    report = run_checks()            # the machine
    report = run_checks(answers)     # and the run an answers file describes
"""

from engine.checks.environment import MachineFacts, gather_facts
from engine.checks.estimate import ComputeDevice, Estimate, TrainingSetup, estimate
from engine.checks.items import CheckItem
from engine.checks.recommend import Recommendations, recommend
from engine.checks.report import CheckReport, run_checks

__all__ = [
    "CheckItem",
    "CheckReport",
    "ComputeDevice",
    "Estimate",
    "MachineFacts",
    "Recommendations",
    "TrainingSetup",
    "estimate",
    "gather_facts",
    "recommend",
    "run_checks",
]
