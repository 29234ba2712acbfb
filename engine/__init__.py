"""The training engine of lora-wizard.

Everything that knows about torch, diffusers, peft, accelerate and safetensors lives here.
Nothing in this package imports a UI library: it is usable as a library and headless.
Modules import torch lazily where they can, so that validating an answers file stays fast.
"""

__version__ = "0.1.0"
