"""The trained network: LoRA, LoCon, LoHa, LoKr (and DoRA) on peft's layers, in the kohya / LyCORIS file format.

    types      which `[network]` settings each type takes, and the kohya metadata names (no torch)
    targets    which modules get a layer (kohya's choice)
    adapters   peft's layers on the model, and their trainable weights
    codecs     one layer <-> its file tensors per type, with the scale conversions the web UIs need
    export     the whole network as kohya-named file tensors
    metadata   ss_* / modelspec metadata, hashes, writing the file
    init_from  starting a run from a file of the same type
    readback   a file back onto a model as a peft adapter (for generating images)

Nothing here imports torch, diffusers or peft at module level.
"""

from engine.network.adapters import (
    ADAPTER,
    NetworkSpec,
    add_lora,
    add_network,
    lora_parameters,
    network_parameters,
    text_encoder_parameters,
)
from engine.network.export import kohya_state_dict
from engine.network.init_from import InitFromResult, load_lora_file_into
from engine.network.metadata import kohya_metadata, safetensors_hashes, save_lora_file
from engine.network.targets import kohya_module_stems, text_encoder_lora_targets, unet_lora_targets

__all__ = [
    "ADAPTER",
    "InitFromResult",
    "NetworkSpec",
    "add_lora",
    "add_network",
    "kohya_metadata",
    "kohya_module_stems",
    "kohya_state_dict",
    "load_lora_file_into",
    "lora_parameters",
    "network_parameters",
    "safetensors_hashes",
    "save_lora_file",
    "text_encoder_lora_targets",
    "text_encoder_parameters",
    "unet_lora_targets",
]
