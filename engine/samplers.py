"""The samplers: kohya's and the web UI's names for them, and the diffusers scheduler each is.
No torch here: the answers file's schema checks a sampler's name with `sampler_key`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.errors import UserError

DEFAULT_SAMPLER = "euler_a"


@dataclass(frozen=True)
class SamplerSpec:
    label: str  # AUTOMATIC1111's name, written into the PNG's parameters
    scheduler: str  # diffusers scheduler class
    options: dict[str, Any] = field(default_factory=dict)


SAMPLERS: dict[str, SamplerSpec] = {
    "euler_a": SamplerSpec("Euler a", "EulerAncestralDiscreteScheduler"),
    "euler": SamplerSpec("Euler", "EulerDiscreteScheduler"),
    "dpmpp_2m": SamplerSpec("DPM++ 2M", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp_2m_karras": SamplerSpec(
        "DPM++ 2M Karras", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}
    ),
    "heun": SamplerSpec("Heun", "HeunDiscreteScheduler"),
    "ddim": SamplerSpec("DDIM", "DDIMScheduler"),
    "pndm": SamplerSpec("PLMS", "PNDMScheduler", {"skip_prk_steps": True}),  # as SD's own scheduler config
}
# kohya's --sample_sampler spellings (k_ prefix, dpmsolver++) and the web UI's ("Euler a", "DPM++ 2M").
SAMPLER_ALIASES = {"dpmsolverpp": "dpmpp_2m", "plms": "pndm"}


def sampler_key(name: str) -> str:
    """The canonical sampler name for kohya's or the web UI's spelling: `Euler a` and `k_euler_a` -> `euler_a`."""
    key = name.strip().lower().replace("++", "pp").replace(" ", "_").replace("-", "_").removeprefix("k_")
    key = SAMPLER_ALIASES.get(key, key)
    if key not in SAMPLERS:
        raise UserError(
            f"unknown sampler `{name}`",
            fix=f"use one of: {', '.join(SAMPLERS)}",
        )
    return key
