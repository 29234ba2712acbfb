"""kohya's four FLUX.1 files, each recognised from its safetensors header before any weight is read.

A FLUX.1 base model is four files (kohya's `--pretrained_model_name_or_path`, `--ae`, `--clip_l`,
`--t5xxl`), and they are easy to mix up: a CLIP file in the T5 slot, an SDXL checkpoint given as the
transformer, an SD VAE for the 16-channel autoencoder. Each file's tensor names and shapes say what
it is; a file in the wrong slot is refused with one message naming the file, the slot and what the
file looks like. dev and schnell are told apart by dev's guidance embedding (`guidance_in`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import ModelFileError
from engine.families.flux_layout import strip_bfl_prefix

FLUX_VARIANTS = {"dev": "FLUX.1 dev", "schnell": "FLUX.1 schnell"}
FP8_DTYPES = {"F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


@dataclass(frozen=True)
class Slot:
    key: str  # the answers-file key
    label: str  # what belongs there
    fix: str


SLOTS = {
    "transformer": Slot(
        "`[model] path`",
        "the FLUX.1 transformer",
        "set `[model] path` to flux1-dev.safetensors or flux1-schnell.safetensors (or an fp8 copy of one)",
    ),
    "ae": Slot(
        "`[model] ae`",
        "the FLUX.1 autoencoder",
        "set `[model] ae` to FLUX.1's ae.safetensors (16 latent channels)",
    ),
    "clip_l": Slot(
        "`[model] clip_l`", "the CLIP-L text encoder", "set `[model] clip_l` to clip_l.safetensors"
    ),
    "t5xxl": Slot(
        "`[model] t5xxl`",
        "the T5-XXL text encoder",
        "set `[model] t5xxl` to t5xxl_fp16.safetensors (or t5xxl_fp8_e4m3fn.safetensors)",
    ),
}


@dataclass
class Header:
    """Tensor shapes and dtypes of a .safetensors file, from its header alone."""

    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, str]
    metadata: dict[str, str] = field(default_factory=dict)


def read_header(path: Path, slot: str) -> Header:
    """The header of the file in `slot`; a missing, pickled or damaged file is a ModelFileError."""
    from safetensors import SafetensorError, safe_open

    where = SLOTS[slot]
    if not path.is_file():
        what = "a folder" if path.is_dir() else "nothing"
        raise ModelFileError(
            f"{where.key} ({where.label}): there is {what} at this path", where=path, fix=where.fix
        )
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ModelFileError(
            f"{where.key} ({where.label}): this is a pickled checkpoint ({path.suffix}); FLUX.1 files are .safetensors "
            "and a pickled file can carry code, so it is not opened",
            where=path,
            fix=where.fix,
        )
    try:
        with safe_open(path, framework="pt") as handle:
            metadata = handle.metadata() or {}
            names = handle.keys()  # safe_open is not iterable
            slices = {key: handle.get_slice(key) for key in names}
            shapes = {key: tuple(part.get_shape()) for key, part in slices.items()}
            dtypes = {key: part.get_dtype() for key, part in slices.items()}
    except (SafetensorError, OSError, ValueError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ModelFileError(
            f"{where.key} ({where.label}): cannot read this file, it is damaged, incomplete or not a .safetensors file ({reason})",
            where=path,
            fix="download the file again (compare its size with the model page)",
        ) from None
    return Header(shapes, dtypes, metadata)


# --- what a file is, from its names and shapes ------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    kind: str  # "transformer", "ae", "clip_l", "t5xxl", or something that fits no slot
    description: str  # for people: "a FLUX.1 dev transformer"
    variant: str = ""  # "dev" or "schnell" for a transformer


def identify(header: Header) -> Identity:
    """What a file holds, judged by its tensor names and shapes."""
    shapes = {bare: header.shapes[key] for bare, key in strip_bfl_prefix(header.shapes).items()}
    keys = list(shapes)
    for test in (_as_other_model, _as_flux_transformer, _as_autoencoder, _as_text_encoder):
        identity = test(shapes, keys)
        if identity is not None:
            return identity
    shown = ", ".join(sorted(keys)[:3])
    return Identity(
        "unknown",
        f"none of its {len(keys)} tensors has a FLUX.1 name (e.g. {shown})"
        if keys
        else "a file with no tensors",
    )


def _as_flux_transformer(shapes: dict[str, tuple[int, ...]], keys: list[str]) -> Identity | None:
    if "double_blocks.0.img_attn.norm.key_norm.scale" not in shapes:
        if any(key.startswith(("double_stream_modulation", "single_stream_modulation")) for key in keys):
            return Identity("other", "a FLUX.2 transformer (this tool trains FLUX.1)")
        return None
    if "img_in.weight" not in shapes:
        return Identity("other", "a FLUX.1 transformer with no `img_in` (incomplete)")
    in_channels = shapes["img_in.weight"][1]
    if in_channels in (384, 128):
        kind = "Fill" if in_channels == 384 else "Depth"
        return Identity("other", f"a FLUX.1 {kind} transformer (train LoRAs on FLUX.1 dev or schnell)")
    variant = "dev" if "guidance_in.in_layer.weight" in shapes else "schnell"
    return Identity("transformer", f"a {FLUX_VARIANTS[variant]} transformer", variant)


def latent_channels(shapes: dict[str, tuple[int, ...]]) -> int | None:
    """A VAE's latent channels: its decoder's first convolution reads them."""
    for key in ("decoder.conv_in.weight", "first_stage_model.decoder.conv_in.weight"):
        if key in shapes:
            return shapes[key][1]
    return None


def _as_autoencoder(shapes: dict[str, tuple[int, ...]], keys: list[str]) -> Identity | None:
    if not any(key.startswith(("encoder.down", "decoder.up")) for key in keys):
        return None
    channels = latent_channels(shapes)
    if channels == 16:
        return Identity("ae", "the FLUX.1 autoencoder (16 latent channels)")
    family = " (an SD 1.x, SD 2.x or SDXL VAE)" if channels == 4 else ""
    return Identity("other", f"a VAE with {channels} latent channels{family}, not FLUX.1's 16")


def _as_text_encoder(shapes: dict[str, tuple[int, ...]], keys: list[str]) -> Identity | None:
    clip_embedding = next(
        (shapes[key] for key in keys if key.endswith("embeddings.token_embedding.weight")), None
    )
    if clip_embedding is not None:
        width = clip_embedding[1]
        name = {
            768: "CLIP-L",
            1280: "OpenCLIP bigG (SDXL's second encoder)",
            1024: "OpenCLIP ViT-H (SD 2.x's)",
        }.get(width)
        if width == 1280 or width == 1024:
            return Identity("other", f"a CLIP text encoder {width} wide: {name}, not CLIP-L")
        return Identity("clip_l", f"a CLIP text encoder ({width} wide{', CLIP-L' if name else ''})")
    if any(re.match(r"(encoder\.)?block\.0\.layer\.0\.SelfAttention\.q\.weight", key) for key in keys):
        embedding = shapes.get("shared.weight") or shapes.get("encoder.embed_tokens.weight")
        width = embedding[1] if embedding else shapes.get("encoder.final_layer_norm.weight", (0,))[0]
        return Identity("t5xxl", f"a T5 text encoder ({width} wide{', T5-XXL' if width == 4096 else ''})")
    return None


def _as_other_model(shapes: dict[str, tuple[int, ...]], keys: list[str]) -> Identity | None:
    if any(key.startswith("lora_") or ".lora_down." in key or ".lora_A." in key for key in keys):
        return Identity("other", "a LoRA, not a base model")
    if any(key.startswith("conditioner.embedders.") for key in keys):
        return Identity("other", "an SDXL checkpoint")
    if any(key.startswith(("model.diffusion_model.input_blocks", "input_blocks.")) for key in keys):
        return Identity("other", "an SD 1.x or 2.x checkpoint (a UNet, not FLUX.1's transformer)")
    if any(key.startswith(("down_blocks.", "up_blocks.")) for key in keys):
        return Identity("other", "a diffusers UNet")
    return None


# --- one slot, and the four together ----------------------------------------------------------------


@dataclass
class FluxFile:
    path: Path
    header: Header
    identity: Identity

    @property
    def fp8(self) -> str | None:
        """The fp8 dtype most of the tensors are stored in (torch's name), or None."""
        counts: dict[str, int] = {}
        for dtype in self.header.dtypes.values():
            counts[dtype] = counts.get(dtype, 0) + 1
        most = max(counts, key=counts.__getitem__) if counts else ""
        return FP8_DTYPES.get(most)


def check_flux_file(path: Path, slot: str) -> FluxFile:
    """The file in `slot`, checked from its header to be what the slot takes."""
    path = Path(path)
    header = read_header(path, slot)
    identity = identify(header)
    where = SLOTS[slot]
    if identity.kind != slot:
        raise ModelFileError(
            f"{where.key} should be {where.label}, but this file is {identity.description}",
            where=path,
            fix=where.fix,
        )
    if slot == "transformer":
        _check_variant_name(path, identity)
        _check_scaled_fp8(path, header)
    return FluxFile(path, header, identity)


def _check_variant_name(path: Path, identity: Identity) -> None:
    """A file named for one variant whose header is the other: the files were mixed up or renamed."""
    name = path.name.lower()
    other = "schnell" if identity.variant == "dev" else "dev"
    if re.search(rf"(^|[^a-z]){other}([^a-z]|$)", name) and not re.search(
        rf"(^|[^a-z]){identity.variant}([^a-z]|$)", name
    ):
        why = (
            "has dev's guidance embedding (`guidance_in`)"
            if identity.variant == "dev"
            else "has no guidance embedding (`guidance_in`), as schnell"
        )
        raise ModelFileError(
            f"`[model] path`: this file's name says FLUX.1 {other}, but its header {why}: it is {identity.description}",
            where=path,
            fix=f"give the FLUX.1 {other} file you meant, or rename this one to say {identity.variant}",
        )


def _check_scaled_fp8(path: Path, header: Header) -> None:
    # ComfyUI's "fp8_scaled" files keep a scale per weight; loading them as plain fp8 would be wrong.
    if any(key.endswith((".scale_weight", ".weight_scale")) for key in header.shapes):
        raise ModelFileError(
            "`[model] path`: this is a scaled-fp8 FLUX.1 file (a scale per weight, ComfyUI's fp8_scaled), which this tool does not read",
            where=path,
            fix="give the bf16 file or a plain fp8 copy (flux1-dev-fp8.safetensors); `[model] fp8_base` makes fp8 storage from the bf16 file",
        )


@dataclass
class FluxFilesInfo:
    """kohya's four FLUX.1 files, each checked, and what they make together."""

    transformer: FluxFile
    ae: FluxFile
    clip_l: FluxFile
    t5xxl: FluxFile

    @property
    def variant(self) -> str:
        return self.transformer.identity.variant

    @property
    def label(self) -> str:
        return FLUX_VARIANTS[self.variant]


def check_flux_files(transformer: Path, ae: Path, clip_l: Path, t5xxl: Path) -> FluxFilesInfo:
    """All four files checked for what they are, then for fitting together (widths and channels)."""
    info = FluxFilesInfo(
        transformer=check_flux_file(transformer, "transformer"),
        ae=check_flux_file(ae, "ae"),
        clip_l=check_flux_file(clip_l, "clip_l"),
        t5xxl=check_flux_file(t5xxl, "t5xxl"),
    )
    _check_widths(info)
    return info


def _text_width(header: Header) -> int:
    for key, shape in header.shapes.items():
        if key.endswith(("embeddings.token_embedding.weight", "shared.weight", "embed_tokens.weight")):
            return shape[1]
    return 0


def _check_widths(info: FluxFilesInfo) -> None:
    shapes = {
        bare: info.transformer.header.shapes[key]
        for bare, key in strip_bfl_prefix(info.transformer.header.shapes).items()
    }
    checks = (
        ("t5xxl", info.t5xxl, _text_width(info.t5xxl.header), shapes["txt_in.weight"][1], "width"),
        (
            "clip_l",
            info.clip_l,
            _text_width(info.clip_l.header),
            shapes["vector_in.in_layer.weight"][1],
            "width",
        ),
        (
            "ae",
            info.ae,
            4 * (latent_channels(info.ae.header.shapes) or 0),
            shapes["img_in.weight"][1],
            "latent channels x 4",
        ),
    )
    for slot, file, given, expected, what in checks:
        if given != expected:
            where = SLOTS[slot]
            raise ModelFileError(
                f"{where.key}: this file's {what} is {given}, the transformer takes {expected}: they are not parts of the same model",
                where=file.path,
                fix=where.fix,
            )
