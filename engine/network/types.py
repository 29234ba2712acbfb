"""The network types and which `[network]` settings each takes, as kohya_ss and LyCORIS name them.

Pure Python (no torch): the answers file is checked against these rules when it is read, before
any model loads. A setting that does not apply to the chosen type is refused with the reason,
never silently ignored.

    lora   kohya's networks.lora: the Linear / 1x1 layers of the attention blocks and the text encoder
    locon  lora plus the 3x3 convolutions of the ResNet blocks (kohya's LoCon, conv_dim / conv_alpha)
    loha   LyCORIS LoHa: a Hadamard product of two low-rank products
    lokr   LyCORIS LoKr: a Kronecker product of a small full factor and a (low-rank) large one

Defaults follow LyCORIS' guidelines where the file leaves a setting out: conv_dim = dim and
conv_alpha = conv_dim (scale 1, as alpha defaults to dim), LoKr's factor -1 (split near the square
root) without full_matrix, every dropout 0.
"""

from __future__ import annotations

import json
from typing import Any

NETWORK_TYPES = ("lora", "locon", "loha", "lokr")
CONV_TYPES = ("locon", "loha", "lokr")  # types that also adapt the ResNet blocks' convolutions

# setting -> (types it applies to, why it does not apply to the others)
APPLIES_TO: dict[str, tuple[tuple[str, ...], str]] = {
    "conv_dim": (CONV_TYPES, 'a plain LoRA adapts no 3x3 convolution: choose `type = "locon"` for LoRA on them'),
    "conv_alpha": (CONV_TYPES, 'a plain LoRA adapts no 3x3 convolution: choose `type = "locon"` for LoRA on them'),
    "factor": (("lokr",), "only LoKr splits each weight into two Kronecker factors"),
    "full_matrix": (("lokr",), "only LoKr has factors that can be full matrices"),
    "dropout": (("lora", "locon"), "peft's LoHa and LoKr layers have no input dropout: use rank_dropout or module_dropout"),
    "rank_dropout": (("loha", "lokr"), "peft's LoRA layers have no rank dropout: use dropout"),
    "module_dropout": (("loha", "lokr"), "peft's LoRA layers have no module dropout: use dropout"),
}
DORA_TYPES = ("lora", "locon")  # peft implements DoRA (use_dora) on its LoRA layers only

# kohya's ss_network_module for each kind of file.
KOHYA_LORA_MODULE = "networks.lora"
LYCORIS_MODULE = "lycoris.kohya"

# A full-matrix LoKr needs no rank: peft keeps both factors whole when the rank is at least half a
# factor's side, so any rank this large does (LyCORIS' own advice for full-matrix LoKr is dim 10000).
FULL_MATRIX_RANK = 100_000


def not_applicable(network_type: str, dora: bool, given: set[str], values: dict[str, Any]) -> list[str]:
    """One message per setting in `given` (the keys the file sets) that the type does not take."""
    problems = []
    for key, (types, reason) in APPLIES_TO.items():
        # An unset, false or zero value asks for nothing (the wizard may leave `full_matrix = false`).
        if key in given and values.get(key) not in (None, False, 0) and network_type not in types:
            problems.append(f"`{key}` does not apply to `type = \"{network_type}\"`: {reason}")
    if dora and network_type not in DORA_TYPES:
        problems.append(
            f'`dora = true` does not apply to `type = "{network_type}"`: peft implements DoRA on LoRA layers only '
            '(choose type "lora" or "locon")'
        )
    if values.get("full_matrix") and network_type == "lokr" and values.get("alpha") is not None:
        problems.append("`alpha` has no effect with `full_matrix = true`: both LoKr factors are whole and apply at scale 1")
    return problems


def kohya_network_module(network_type: str, dora: bool) -> str:
    """ss_network_module: kohya's own networks.lora for lora and locon, lycoris.kohya for the rest and for DoRA."""
    return KOHYA_LORA_MODULE if network_type in ("lora", "locon") and not dora else LYCORIS_MODULE


def kohya_network_args(network: Any) -> dict[str, str]:
    """ss_network_args as kohya's `--network_args key=value` leaves them: every value a string."""
    args: dict[str, str] = {}
    if kohya_network_module(network.type, network.dora) == LYCORIS_MODULE:
        args["algo"] = network.type
    if network.type in CONV_TYPES:
        args["conv_dim"] = str(network.effective_conv_dim)
        args["conv_alpha"] = _number(network.effective_conv_alpha)
    if network.type == "lokr":
        args["factor"] = str(network.factor)
        if network.full_matrix:
            args["full_matrix"] = "True"
    if network.dora:
        args["dora_wd"] = "True"
    for key in ("dropout", "rank_dropout", "module_dropout"):
        value = getattr(network, key)
        if value:
            args[key] = _number(value)
    return args


def kohya_network_args_json(network: Any) -> str:
    return json.dumps(kohya_network_args(network))


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
