"""lora-wizard's user interface: the `lora-wizard` command and the Textual app.

Nothing here imports torch, diffusers or peft at module import time: the wizard paints before
any of them load. Training goes through `engine/`.
"""
