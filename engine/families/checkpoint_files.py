"""Reading single checkpoint files safely: a .safetensors file through its header and safe_open, a
.ckpt / .pt / .pth file with torch's weights-only unpickler (pickled code is never run; a few
known-harmless training-time objects are allowed, as inert stand-ins). Damaged files and files
that carry code are ModelFileErrors that name the file.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from engine.errors import ModelFileError

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")


def check_single_file_path(path: Path) -> None:
    if not path.exists():
        raise ModelFileError("the base model does not exist", where=path, fix="check the path in the answers file", key="model.path")
    if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
        raise ModelFileError(
            f"`{path.suffix}` is not a model file this tool reads",
            where=path,
            fix="give a .safetensors or .ckpt file, or a diffusers model folder",
        )


class _InertStandIn:
    """Takes the place of a pickled training-time object (a Lightning callback): holds its state, runs nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass


# Globals that real SD .ckpt files pickle besides tensors, all inert data. Lightning callbacks are
# replaced by `_InertStandIn`; numpy's array/scalar constructors only rebuild data.
_STAND_IN_NAMES = (
    "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
    "pytorch_lightning.callbacks.early_stopping.EarlyStopping",
    "pytorch_lightning.callbacks.lr_monitor.LearningRateMonitor",
    "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint",
    "lightning.pytorch.callbacks.early_stopping.EarlyStopping",
    "lightning.pytorch.callbacks.lr_monitor.LearningRateMonitor",
)


def _known_harmless_globals() -> list[tuple[Any, str]]:
    allowed: list[tuple[Any, str]] = [(_InertStandIn, name) for name in _STAND_IN_NAMES]
    try:
        import numpy
    except ImportError:  # numpy is optional for torch; files needing it then fail as "contains code"
        return allowed
    multiarray = numpy._core.multiarray if hasattr(numpy, "_core") else numpy.core.multiarray
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed += [(multiarray.scalar, f"{module}.scalar"), (multiarray._reconstruct, f"{module}._reconstruct")]
    allowed += [(numpy.ndarray, "numpy.ndarray"), (numpy.dtype, "numpy.dtype")]
    for dtype_name in ("Float64DType", "Float32DType", "Float16DType", "Int64DType", "Int32DType", "BoolDType"):
        if hasattr(getattr(numpy, "dtypes", None), dtype_name):
            allowed.append((getattr(numpy.dtypes, dtype_name), f"numpy.dtypes.{dtype_name}"))
    return allowed


@contextmanager
def _harmless_globals_allowed() -> Iterator[None]:
    import torch

    with torch.serialization.safe_globals(_known_harmless_globals()):
        yield


# What torch's weights-only unpickler says when it refuses a global (as opposed to a damaged pickle).
_CODE_REFUSALS = ("Unsupported global", "unrecognized function", "Can only build", "Can only create new object", "is blocked")
# The refused global's name, in both of torch's spellings: "Unsupported global: GLOBAL getattr was not an
# allowed global ..." and "Trying to load unsupported GLOBAL posix.system whose module posix is blocked".
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def _refuse_code(path: Path, names: list[str] | str) -> ModelFileError:
    what = ", ".join(sorted(names)) if isinstance(names, list) else names
    return ModelFileError(
        f"this checkpoint contains code (pickled objects: {what}) and was not loaded; nothing in it was run",
        where=path,
        fix="use a .safetensors version of this model (most model pages offer one), or convert it with a tool you trust",
    )


def read_pickle_checkpoint(path: Path, *, mmap: bool = False) -> dict[str, Any]:
    """Tensors of a .ckpt/.pt file, unpickled with `weights_only=True`: pickled code is never executed."""
    import pickle

    import torch

    with _harmless_globals_allowed():
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except ValueError:
            unsafe = []  # legacy (pre-zip) format: the weights-only unpickler below still refuses code
        except (OSError, RuntimeError) as exc:
            raise _damaged(path, exc) from None
        if unsafe:
            raise _refuse_code(path, unsafe)
        try:
            with warnings.catch_warnings():  # torch warns about legacy formats on stderr
                warnings.simplefilter("ignore")
                loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except pickle.UnpicklingError as exc:
            message = str(exc)
            if not any(marker in message for marker in _CODE_REFUSALS):
                raise _damaged(path, exc) from None
            # Name what was refused; never pass on torch's advice to allowlist it or to drop weights_only.
            refused = sorted(set(_REFUSED_GLOBAL.findall(message))) or "an object torch's safe loader refuses"
            raise _refuse_code(path, refused) from None
        except (OSError, RuntimeError, EOFError, ValueError) as exc:
            if mmap:  # legacy formats cannot be memory-mapped
                return read_pickle_checkpoint(path, mmap=False)
            raise _damaged(path, exc) from None
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise ModelFileError("this file holds no state dict of tensors", where=path, fix="give a Stable Diffusion checkpoint")
    return {key: value for key, value in loaded.items() if isinstance(key, str) and isinstance(value, torch.Tensor)}


def _damaged(path: Path, exc: BaseException) -> ModelFileError:
    # Only the first line of the library's message: torch's long advice (e.g. to turn weights_only
    # off) is not for our users.
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return ModelFileError(
        f"cannot read this model file, it is damaged or incomplete ({reason})",
        where=path,
        fix="download the file again (compare its size or hash with the model page)",
    )


def read_safetensors(path: Path, keys: list[str]) -> dict[str, Any]:
    """The tensors `keys` of a .safetensors file."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as handle:
            return {key: handle.get_tensor(key) for key in keys}
    except (SafetensorError, OSError, ValueError) as exc:
        raise _damaged(path, exc) from None


def read_safetensors_shapes(path: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """Tensor shapes and metadata from the header alone: no weights are read."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as handle:
            metadata = handle.metadata() or {}
            names = handle.keys()
            shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in names}
    except (SafetensorError, OSError, ValueError) as exc:
        raise _damaged(path, exc) from None
    return shapes, metadata


def single_file_note(label: str, path: Path, tensors: dict[str, Any]) -> str:
    """What was loaded, for the plan: `SD 1.x single file model.safetensors (weights stored as float16, ...)`."""
    stored = sorted({str(value.dtype).removeprefix("torch.") for value in tensors.values() if value.is_floating_point()})
    return f"{label} single file {path.name} (weights stored as {'/'.join(stored)}, loaded as float32)"
