"""Images from a base model, with or without LoRAs: samples during training, `generate`, regularization images.

One code path makes every image: a diffusers `StableDiffusionPipeline` (`StableDiffusionXLPipeline` for
SDXL) assembled from a `LoadedModel`'s own components (no second load from disk), the prompt encoded by
the model family (so clip skip works as in training), the initial noise and every sampler draw from a CPU `torch.Generator` seeded per image
(the same bytes on a rerun, whatever the device), and the latents decoded by the VAE in its own dtype.

Prompts follow kohya's sample-prompt syntax (`prompt --n negative --w 512 --h 512 --s 28 --l 7.5 --d 42
--ss euler_a`); LoRAs are named in prompts as AUTOMATIC1111 does (`<lora:name:0.8>`) and loaded with
diffusers' `load_lora_weights`, or for LoHa, LoKr and DoRA files (which diffusers does not read) by
engine.network.readback into peft layers of their type. docs/samples.md is the user's guide to both.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import ModelFileError, UserError
from engine.files import atomic_write_bytes
from engine.seeds import derive_seed

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from engine.families import LoadedModel

DEFAULT_STEPS = 28
DEFAULT_CFG = 7.5
DEFAULT_SAMPLER = "euler_a"
MIN_SIDE = 64  # kohya's smallest sample side
SEED_RANGE = 2**32  # seeds people can type into a web UI

# --- samplers ----------------------------------------------------------------------------------------


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


def build_scheduler(model: LoadedModel, sampler: str) -> Any:
    """A fresh diffusers scheduler for `sampler`, built from the model's own scheduler config
    (its betas, timestep count and prediction type), so v-prediction models sample correctly."""
    import diffusers

    spec = SAMPLERS[sampler_key(sampler)]
    scheduler_class = getattr(diffusers, spec.scheduler)
    with _quiet_libraries():  # the training scheduler's extra config keys are reported, not needed
        return scheduler_class.from_config(model.objective.scheduler.config, **spec.options)


# --- kohya's sample prompts --------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplePrompt:
    """One image request. `seed` None: derived from the run's seed and the prompt's position."""

    prompt: str
    negative: str = ""
    width: int = 512
    height: int = 512
    steps: int = DEFAULT_STEPS
    cfg: float = DEFAULT_CFG
    seed: int | None = None
    sampler: str = DEFAULT_SAMPLER

    def __post_init__(self) -> None:
        # kohya's rule: sides are rounded down to a multiple of 8, at least 64; steps within 1..1000.
        object.__setattr__(self, "width", max(MIN_SIDE, self.width - self.width % 8))
        object.__setattr__(self, "height", max(MIN_SIDE, self.height - self.height % 8))
        object.__setattr__(self, "steps", max(1, min(1000, self.steps)))
        object.__setattr__(self, "sampler", sampler_key(self.sampler))


# kohya's option letters (library/train_util.py line_to_prompt_dict): field name and value type.
PROMPT_OPTIONS: dict[str, tuple[str, type]] = {
    "n": ("negative", str),
    "w": ("width", int),
    "h": ("height", int),
    "s": ("steps", int),
    "l": ("cfg", float),
    "d": ("seed", int),
    "ss": ("sampler", str),
}
PROMPT_EXAMPLE = "a photo of usu bear --n blurry --w 512 --h 512 --s 28 --l 7.5 --d 42 --ss euler_a"


def parse_prompt_line(line: str, defaults: SamplePrompt | None = None, *, where: str | Path | None = None) -> SamplePrompt:
    """One line of a kohya prompt file. Options a line does not set come from `defaults`.

    Unlike kohya, an unknown option or a bad value is an error rather than silently ignored.
    """
    defaults = defaults or SamplePrompt(prompt="")
    prompt, *options = (" " + line.strip()).split(" --")  # the space: a line starting with an option has no prompt
    values: dict[str, Any] = {"prompt": prompt.strip()}
    for option in options:
        letter, _, value = option.strip().partition(" ")
        if letter.lower() not in PROMPT_OPTIONS:
            raise UserError(
                f"unknown prompt option `--{letter}` in: {line.strip()}",
                where=where,
                fix=f"use --n --w --h --s --l --d --ss, e.g. `{PROMPT_EXAMPLE}`",
            )
        name, kind = PROMPT_OPTIONS[letter.lower()]
        values[name] = _option_value(line, letter, value.strip(), kind, where)
    if not values["prompt"]:
        raise UserError(f"a sample line without a prompt: {line.strip()}", where=where, fix=f"start the line with the prompt, e.g. `{PROMPT_EXAMPLE}`")
    try:
        return replace(defaults, **values)
    except UserError as exc:  # an unknown sampler: say which line names it
        raise UserError(f"{exc.message} in: {line.strip()}", where=where, fix=exc.fix) from None


def _option_value(line: str, letter: str, value: str, kind: type, where: str | Path | None) -> Any:
    try:
        if not value:
            raise ValueError
        return kind(value)
    except ValueError:
        raise UserError(
            f"`--{letter}` needs {'a number' if kind is not str else 'a value'} in: {line.strip()}",
            where=where,
            fix=f"write it like `{PROMPT_EXAMPLE}`",
        ) from None


def parse_prompts(text: str, defaults: SamplePrompt | None = None, *, where: str | Path | None = None) -> list[SamplePrompt]:
    """Every prompt of a kohya prompt file's text: one a line; blank lines and `#` comments skipped."""
    lines = [line.strip() for line in text.splitlines()]
    return [parse_prompt_line(line, defaults, where=where) for line in lines if line and not line.startswith("#")]


def read_prompt_file(path: Path, defaults: SamplePrompt | None = None) -> list[SamplePrompt]:
    """A kohya prompt file (.txt, UTF-8)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError("no prompt file here", where=path, fix="check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read the prompt file: {exc}", where=path, fix="save it as UTF-8 text, one prompt a line") from None
    prompts = parse_prompts(text, defaults, where=path)
    if not prompts:
        raise UserError("the prompt file holds no prompts", where=path, fix=f"write one prompt a line, e.g. `{PROMPT_EXAMPLE}`")
    return prompts


# --- <lora:name:weight> tags -------------------------------------------------------------------------

LORA_TAG_START = re.compile(r"<lora:", re.IGNORECASE)
LORA_TAG = re.compile(r"<lora:(?P<name>[^:<>]+)(?::(?P<weight>[^:<>]*))?>", re.IGNORECASE)
LORA_TAG_EXAMPLE = "<lora:usu_bear:0.8>"


def parse_lora_tags(prompt: str) -> tuple[str, list[tuple[str, float]]]:
    """AUTOMATIC1111's `<lora:name:weight>` tags: (the prompt without them, [(name, weight), ...]).

    The weight is optional (default 1); it scales the LoRA in the UNet and the text encoder alike.
    A malformed tag or a LoRA named twice is a UserError.
    """
    tags: list[tuple[str, float]] = []
    pieces, position = [], 0
    for start in LORA_TAG_START.finditer(prompt):
        match = LORA_TAG.match(prompt, start.start())
        tag_text = match.group(0) if match else prompt[start.start() :].split(">")[0][:60]
        if not match:
            raise UserError(f"malformed LoRA tag `{tag_text}`", fix=f"write `<lora:NAME>` or `<lora:NAME:WEIGHT>`, e.g. `{LORA_TAG_EXAMPLE}`")
        name = match.group("name").strip()
        weight = _tag_weight(tag_text, match.group("weight"))
        if name in (n for n, _ in tags):
            raise UserError(f"LoRA `{name}` is named twice in the prompt", fix="keep one tag per LoRA")
        tags.append((name, weight))
        pieces.append(prompt[position : start.start()])
        position = match.end()
    pieces.append(prompt[position:])
    clean = re.sub(r"\s+", " ", "".join(pieces)).strip()
    return clean, tags


def _tag_weight(tag_text: str, weight: str | None) -> float:
    if weight is None:
        return 1.0
    try:
        return float(weight)
    except ValueError:
        raise UserError(f"malformed LoRA tag `{tag_text}`: the weight `{weight}` is not a number", fix=f"e.g. `{LORA_TAG_EXAMPLE}`") from None


def find_lora_files(lora_dir: Path) -> dict[str, list[Path]]:
    """LoRA name (file stem) -> the .safetensors files of that name under `lora_dir` (subfolders too)."""
    found: dict[str, list[Path]] = {}
    if Path(lora_dir).is_dir():
        for path in sorted(Path(lora_dir).rglob("*.safetensors")):
            found.setdefault(path.stem, []).append(path)
    return found


def resolve_lora_files(names: list[str], lora_dir: Path) -> dict[str, Path]:
    """The file of each LoRA name, or a UserError that lists the LoRAs found in `lora_dir`."""
    if not names:
        return {}
    lora_dir = Path(lora_dir)
    found = find_lora_files(lora_dir)
    files = {}
    for name in names:
        matches = found.get(name) or found.get(name.removesuffix(".safetensors"), [])
        if len(matches) > 1:
            raise UserError(f"several LoRA files are named `{name}`: {', '.join(map(str, matches))}", where=lora_dir, fix="rename one of them")
        if not matches:
            raise UserError(f"no LoRA named `{name}` ({_listing(found)})", where=lora_dir, fix=_missing_lora_fix(found))
        files[name] = matches[0]
    return files


def _listing(found: dict[str, list[Path]], shown: int = 20) -> str:
    if not found:
        return "this folder holds no .safetensors files"
    names = sorted(found)
    more = f", and {len(names) - shown} more" if len(names) > shown else ""
    return f"LoRAs found here: {', '.join(names[:shown])}{more}"


def _missing_lora_fix(found: dict[str, list[Path]]) -> str:
    if not found:
        return "give the folder that holds your LoRA files with --lora-dir"
    return "use one of the names above (the file name without .safetensors), or another --lora-dir"


# --- devices -----------------------------------------------------------------------------------------


def inference_device(requested: str | None = None) -> torch.device:
    """The device to generate on: `requested`, else CUDA, else Apple's MPS, else the CPU."""
    import torch

    if requested:
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def inference_dtype(device: torch.device) -> torch.dtype:
    """fp16 on CUDA; fp32 elsewhere (CPUs have no fast fp16, and MPS fp16 is not reliable for every op)."""
    import torch

    return torch.float16 if device.type == "cuda" else torch.float32


# --- making images -----------------------------------------------------------------------------------


class ImageMaker:
    """Makes images with a LoadedModel's own modules, and the LoRAs loaded into them.

    Works on whatever devices and dtypes the modules are on, so the training loop can sample from its
    live, LoRA-wrapped model. For a model loaded only to make images, use `ImageMaker.from_path`.
    """

    def __init__(self, model: LoadedModel, *, clip_skip: int = 1):
        self.model = model
        self.clip_skip = clip_skip
        self.flux = _is_flux(model)  # FluxPipeline: packed latents, no negative prompt, its flow scheduler
        self.pipeline = _build_pipeline(model)
        self.adapters: dict[str, str] = {}  # LoRA name -> peft adapter name
        self.own_adapters: set[str] = set()  # adapters of LyCORIS / DoRA files, loaded by engine.network.readback
        self._loads = 0  # adapters ever loaded: each gets a new name, even after a failed load

    @classmethod
    def from_path(
        cls,
        path: str | Path,
        *,
        device: str | None = None,
        tokenizer: str | Path | None = None,
        prediction: str = "auto",
        clip_skip: int = 1,
        vae: str | Path | None = None,
        flux: Any = None,
    ) -> ImageMaker:
        """Load a base model (diffusers folder or single file) for inference: eval mode, fp16 on CUDA.
        `vae` (a folder or file, as `[model] vae`) replaces the model's own VAE."""
        import torch

        from engine.families import load_base_model

        with _no_progress_bars():
            model = load_base_model(path, prediction=prediction, tokenizer=tokenizer, vae=vae, flux=flux)
        target = inference_device(device)
        dtype = inference_dtype(target)
        # The base model's VAE stays fp32 (SD's, SDXL's above all, can overflow in fp16); a VAE given
        # in its place is taken to be fp16-safe, as training takes it.
        vae_dtype = dtype if vae is not None else torch.float32
        with _quiet_libraries():  # diffusers warns about any dtype cast, even of models with nothing to keep in fp32
            for module in (model.denoiser, *model.text_encoders):
                module.to(target, dtype=dtype).eval().requires_grad_(False)
            model.vae.to(target, dtype=vae_dtype).eval().requires_grad_(False)
        return cls(model, clip_skip=clip_skip)

    # --- LoRAs

    def load_loras(self, files: dict[str, Path]) -> None:
        """Load kohya-format LoRA files (name -> path) as separate adapters, all inactive until weighted."""
        from engine.network.readback import diffusers_reads, load_network_file

        for name, path in files.items():
            if name in self.adapters:
                continue
            adapter = f"lora{self._loads}"  # peft adapter names may not contain dots; file names may
            self._loads += 1
            try:
                with _quiet_libraries(logging.CRITICAL), _no_progress_bars(), warnings.catch_warnings():
                    # peft warns that a second adapter makes several adapters: that is the point here.
                    warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                    if diffusers_reads(path):
                        self.pipeline.load_lora_weights(self._lora_source(path), adapter_name=adapter)
                    else:  # LoHa, LoKr, DoRA: diffusers does not read them; peft layers of their own type do
                        load_network_file(self.model, path, adapter)
                        self.own_adapters.add(adapter)
            except ModelFileError:
                self._discard(adapter)
                raise
            except (ValueError, KeyError, RuntimeError, OSError) as exc:
                self._discard(adapter)
                lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
                raise ModelFileError(
                    f"this LoRA does not load into the base model: {' '.join(lines[:2])[:300]}", where=path, fix=LORA_FAMILY_FIX
                ) from None
            self.adapters[name] = adapter
            self._check_every_layer_loaded(path, adapter)
        self.set_lora_weights({})

    def _lora_source(self, path: Path) -> Any:
        """What `load_lora_weights` reads: the file, or for FLUX.1 the file split back onto diffusers'
        layers (diffusers' kohya FLUX converter only knows FLUX.1's full width)."""
        if not self.flux:
            return str(path)
        from safetensors.torch import load_file

        from engine.families.flux_sampling import kohya_to_diffusers

        converted, unmatched = kohya_to_diffusers(load_file(path), self.model.denoiser, self.model.text_encoders[0])
        if unmatched:
            raise ValueError(f"{len(unmatched)} of its modules name nothing in this model, e.g. {unmatched[0]}")
        return converted

    def _check_every_layer_loaded(self, path: Path, adapter: str) -> None:
        """diffusers silently drops kohya layers that name no module of the model; count them instead."""
        from peft.tuners.lora import LoraLayer

        expected = _kohya_layer_count(path)
        parts = (self.model.denoiser, *self.model.text_encoders)
        loaded = sum(isinstance(m, LoraLayer) and adapter in m.lora_A for part in parts for m in part.modules())
        if expected is not None and loaded < expected:
            self._discard(adapter)
            raise ModelFileError(
                f"only {loaded} of the {expected} layers of this LoRA match the base model; the rest would be ignored",
                where=path,
                fix=LORA_FAMILY_FIX,
            )

    def _discard(self, adapter: str) -> None:
        """Take a LoRA that failed to load fully back out of the model, so the images stay right."""
        self.adapters = {name: a for name, a in self.adapters.items() if a != adapter}
        if adapter in self.own_adapters:
            from engine.network.readback import remove_adapter

            self.own_adapters.discard(adapter)
            remove_adapter(self.model, adapter)
            return
        if any(adapter in names for names in self.pipeline.get_list_adapters().values()):
            self.pipeline.delete_adapters(adapter)

    def set_lora_weights(self, weights: dict[str, float]) -> None:
        """Activate the named LoRAs at their weights; every other loaded LoRA is off.

        A LoRA at weight 0 is switched off rather than scaled by 0, so it gives exactly the base
        model's output (no rounding from adding a zero delta).
        """
        if not self.adapters:
            return
        active = {self.adapters[name]: weight for name, weight in weights.items() if weight != 0}
        own = {adapter: weight for adapter, weight in active.items() if adapter in self.own_adapters}
        active = {adapter: weight for adapter, weight in active.items() if adapter not in own}
        if set(self.adapters.values()) - self.own_adapters:  # diffusers' adapters (its calls reach every peft layer)
            if not active:
                self.pipeline.disable_lora()
            else:
                self.pipeline.enable_lora()
                self.pipeline.set_adapters(list(active), adapter_weights=list(active.values()))
        if self.own_adapters:
            self._weigh_own_adapters(own)

    def _weigh_own_adapters(self, weights: dict[str, float]) -> None:
        """Activate the readback adapters in `weights` at their weights (peft's set_scale); the rest are off."""
        from engine.network.adapters import adapter_layers

        for adapter in self.own_adapters:
            for part in (self.model.denoiser, *self.model.text_encoders):
                for _, layer in adapter_layers(part, adapter):
                    on = [name for name in weights if name in layer.r]
                    layer.enable_adapters(bool(on))
                    layer.set_adapter(on or [adapter])
                    for name in on:
                        layer.set_scale(name, weights[name])

    # --- images

    def images(self, prompt: SamplePrompt, seeds: list[int], embeds: dict[str, torch.Tensor] | None = None) -> list[Image.Image]:
        """One image per seed (a batch), each from its own CPU generator: the same seed gives the same image.
        `embeds`: the prompt's conditioning from `prompt_embeds`, when the text encoders ran earlier."""
        import torch

        model = self.model
        pipeline = self.pipeline
        if not self.flux:  # FLUX.1 keeps its own flow-matching scheduler
            pipeline.scheduler = build_scheduler(model, prompt.sampler)
        with torch.no_grad(), _eval_mode(model):
            embeds = embeds if embeds is not None else self._prompt_embeds(prompt)
            generators = [torch.Generator(device="cpu").manual_seed(seed) for seed in seeds]
            latents = pipeline(
                **embeds,
                num_images_per_prompt=len(seeds),
                width=prompt.width,
                height=prompt.height,
                num_inference_steps=prompt.steps,
                guidance_scale=prompt.cfg,
                generator=generators,
                output_type="latent",
                return_dict=False,
            )[0]
            if self.flux:
                from engine.families.flux_sampling import decode

                return decode(pipeline, latents, prompt.width, prompt.height)
            return self._decode(latents)

    def prompt_embeds(self, prompt: SamplePrompt) -> dict[str, torch.Tensor]:
        """The prompt's conditioning for `images`: the text encoders' whole share of the work."""
        import torch

        with torch.no_grad(), _eval_mode(self.model):
            return self._prompt_embeds(prompt)

    def _encode(self, text: str) -> dict[str, torch.Tensor]:
        """The UNet's text conditioning, as the training loop computes it (the family's clip skip)."""
        model = self.model
        return model.family.encode(model, model.family.tokenize(model, [text]), self.clip_skip)

    def _prompt_embeds(self, prompt: SamplePrompt) -> dict[str, torch.Tensor]:
        """The pipeline's prompt arguments: the context of both prompts, and for SDXL the pooled text
        (the pipeline adds SDXL's size conditioning for an uncropped image of the requested size)."""
        unet_dtype = _dtype_of(self.model.denoiser)
        if self.flux:
            from engine.families.flux_sampling import pipeline_embeds

            return pipeline_embeds(self._encode(prompt.prompt), _dtype_of(self.model.text_encoders[0]))
        positive, negative = self._encode(prompt.prompt), self._encode(prompt.negative)
        embeds = {
            "prompt_embeds": positive["encoder_hidden_states"].to(unet_dtype),
            "negative_prompt_embeds": negative["encoder_hidden_states"].to(unet_dtype),
        }
        if "text_embeds" in positive:
            embeds["pooled_prompt_embeds"] = positive["text_embeds"].to(unet_dtype)
            embeds["negative_pooled_prompt_embeds"] = negative["text_embeds"].to(unet_dtype)
        return embeds

    def _decode(self, latents: torch.Tensor) -> list[Image.Image]:
        vae = self.model.vae
        latents = latents.to(device=_device_of(vae), dtype=_dtype_of(vae)) / vae.config.scaling_factor
        pixels = vae.decode(latents, return_dict=False)[0]
        return self.pipeline.image_processor.postprocess(pixels.float(), output_type="pil")


LORA_FAMILY_FIX = "use a LoRA trained for this model family (SD 1.x LoRAs for SD 1.x models, and so on)"


def _kohya_layer_count(path: Path) -> int | None:
    """How many layers a kohya-format file adapts (its `.lora_down.weight` keys); None for other formats."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        keys = list(handle.keys())
    if not keys or not all(key.startswith(("lora_unet_", "lora_te")) for key in keys):
        return None
    return sum(key.endswith(".lora_down.weight") for key in keys)


def _is_flux(model: LoadedModel) -> bool:
    from engine.families.flux import Flux1

    return isinstance(model.family, Flux1)


def _build_pipeline(model: LoadedModel) -> Any:
    from accelerate.utils import extract_model_from_parallel

    if _is_flux(model):
        from engine.families.flux_sampling import build_flux_pipeline

        with _quiet_libraries():
            return build_flux_pipeline(model)
    if model.family.name == "sdxl":
        return _build_sdxl_pipeline(model)
    if model.family.name not in ("sd1", "sd2"):
        raise UserError(f"making images with {model.family.label} models is not supported yet", where=model.source)
    with _quiet_libraries():
        from diffusers import StableDiffusionPipeline

        pipeline = StableDiffusionPipeline(
            vae=model.vae,
            text_encoder=extract_model_from_parallel(model.text_encoders[0]),
            tokenizer=model.tokenizers[0],
            unet=extract_model_from_parallel(model.denoiser),
            scheduler=build_scheduler(model, DEFAULT_SAMPLER),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _build_sdxl_pipeline(model: LoadedModel) -> Any:
    """diffusers' StableDiffusionXLPipeline on the model's own modules, without the invisible watermark
    (it needs the extra invisible-watermark package, which the project does not install)."""
    from accelerate.utils import extract_model_from_parallel

    with _quiet_libraries():
        from diffusers import StableDiffusionXLPipeline

        first, second = (extract_model_from_parallel(encoder) for encoder in model.text_encoders)
        pipeline = StableDiffusionXLPipeline(
            vae=model.vae,
            text_encoder=first,
            text_encoder_2=second,
            tokenizer=model.tokenizers[0],
            tokenizer_2=model.tokenizers[1],
            unet=extract_model_from_parallel(model.denoiser),
            scheduler=build_scheduler(model, DEFAULT_SAMPLER),
            add_watermarker=False,
        )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _dtype_of(module: Any) -> torch.dtype:
    return next(module.parameters()).dtype


def _device_of(module: Any) -> torch.device:
    return next(module.parameters()).device


@contextlib.contextmanager
def _eval_mode(model: LoadedModel) -> Iterator[None]:
    """Eval mode for every module while images are made; each module's own train flag restored after."""
    modules = [m for part in (model.denoiser, model.vae, *model.text_encoders) for m in part.modules()]
    flags = [m.training for m in modules]
    for module in modules:
        module.training = False
    try:
        yield
    finally:
        for module, flag in zip(modules, flags, strict=True):
            module.training = flag


@contextlib.contextmanager
def _quiet_libraries(level: int = logging.ERROR) -> Iterator[None]:
    """diffusers and transformers report ignored config keys and base weights missing from a LoRA file at
    warning level; neither is a problem here, and neither belongs in the user's terminal."""
    import diffusers
    import transformers

    old = diffusers.utils.logging.get_verbosity(), transformers.utils.logging.get_verbosity()
    diffusers.utils.logging.set_verbosity(level)
    transformers.utils.logging.set_verbosity(level)
    try:
        yield
    finally:
        diffusers.utils.logging.set_verbosity(old[0])
        transformers.utils.logging.set_verbosity(old[1])


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """transformers draws a progress bar for every model it loads; the engine prints nothing of its own."""
    import transformers

    logging = transformers.utils.logging
    was_enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            logging.enable_progress_bar()


# --- PNG files ---------------------------------------------------------------------------------------


def png_bytes(image: Image.Image, parameters: str | None = None) -> bytes:
    """The PNG of `image`, with AUTOMATIC1111's `parameters` text chunk (its PNG Info tab reads it)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    if parameters:
        info.add_text("parameters", parameters)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def image_parameters(prompt: SamplePrompt, seed: int, *, text: str | None = None, model_name: str | None = None) -> str:
    """The generation settings in AUTOMATIC1111's format; `text` is the prompt as typed (with its LoRA tags)."""
    lines = [text if text is not None else prompt.prompt]
    if prompt.negative:
        lines.append(f"Negative prompt: {prompt.negative}")
    settings = [
        f"Steps: {prompt.steps}",
        f"Sampler: {SAMPLERS[prompt.sampler].label}",
        f"CFG scale: {prompt.cfg:g}",
        f"Seed: {seed}",
        f"Size: {prompt.width}x{prompt.height}",
    ]
    if model_name:
        settings.append(f"Model: {model_name}")
    lines.append(", ".join(settings))
    return "\n".join(lines)


def save_image(path: Path, image: Image.Image, parameters: str | None = None) -> Path:
    """Write a PNG atomically: a killed process never leaves half an image."""
    atomic_write_bytes(Path(path), png_bytes(image, parameters))
    return Path(path)


# --- samples during training -------------------------------------------------------------------------


def sample_seed(run_seed: int, index: int, prompt: SamplePrompt) -> int:
    """A prompt's own seed (`--d`), else one derived from the run's seed and the prompt's position."""
    return prompt.seed if prompt.seed is not None else derive_seed(run_seed, "sample", index) % SEED_RANGE


def sample_file_name(name: str, index: int, seed: int, *, step: int, epoch: int | None = None) -> str:
    """kohya's sample name without its timestamp, so a rerun writes the same file:
    `{name}_e000002_00_{seed}.png` at an epoch's end, `{name}_000100_00_{seed}.png` at a step."""
    position = f"e{epoch:06d}" if epoch is not None else f"{step:06d}"
    return f"{name}_{position}_{index:02d}_{seed}.png"


def sample_images(
    model: LoadedModel,
    prompts: list[SamplePrompt],
    out_dir: Path,
    *,
    name: str,
    step: int,
    epoch: int | None = None,
    seed: int = 0,
    clip_skip: int = 1,
    text_encoders_in_use: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> list[Path]:
    """Sample images from the model as it is now (the training loop's live, LoRA-wrapped model).

    Runs under no_grad in eval mode and restores every module's train flag and the global RNG state
    afterwards, so training continues exactly as it would have without samples. The modules stay on
    their devices and dtypes. Returns the files written, one per prompt, in prompt order.

    Every prompt is encoded first, inside `text_encoders_in_use` (the training loop brings frozen
    text encoders from host memory for it), so they need not be on the GPU while the UNet and the
    VAE make the images: for SDXL 1.5 GB less at the VAE's decoding peak.
    """
    import torch

    maker = ImageMaker(model, clip_skip=clip_skip)
    cuda_devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    written = []
    with torch.random.fork_rng(devices=cuda_devices):
        with text_encoders_in_use():
            conditioning = [maker.prompt_embeds(prompt) for prompt in prompts]
        for index, (prompt, embeds) in enumerate(zip(prompts, conditioning, strict=True)):
            image_seed = sample_seed(seed, index, prompt)
            image = maker.images(prompt, [image_seed], embeds)[0]
            path = Path(out_dir) / sample_file_name(name, index, image_seed, step=step, epoch=epoch)
            written.append(save_image(path, image, image_parameters(prompt, image_seed, model_name=Path(model.source).name)))
    return written


# --- `generate` and the weight grid ------------------------------------------------------------------


@dataclass
class GeneratedImage:
    image: Image.Image
    seed: int
    parameters: str  # AUTOMATIC1111's PNG info


def generate(
    maker: ImageMaker, text: str, prompt: SamplePrompt, seeds: list[int], *, lora_dir: Path | None = None
) -> list[GeneratedImage]:
    """Images for a prompt that may name LoRAs with `<lora:name:weight>` tags, one per seed.

    `text` is the prompt as typed; `prompt` carries the other settings (its own `prompt` is replaced
    by `text` without the tags). LoRA names are looked up in `lora_dir` (default: the current folder).
    """
    clean, tags = parse_lora_tags(text)
    maker.load_loras(resolve_lora_files([name for name, _ in tags], lora_dir or Path.cwd()))
    maker.set_lora_weights(dict(tags))
    prompt = replace(prompt, prompt=clean)
    model_name = Path(maker.model.source).name
    return [
        GeneratedImage(image, seed, image_parameters(prompt, seed, text=text, model_name=model_name))
        for seed, image in zip(seeds, maker.images(prompt, seeds), strict=True)
    ]


@dataclass
class WeightGrid:
    image: Image.Image  # the whole grid: a label row, then one row of cells per seed
    lora: str
    weights: list[float]
    seeds: list[int]
    cells: list[list[Image.Image]]  # cells[row][column]: the unlabelled image of seed `row` at weight `column`
    label_height: int


def weight_grid(
    maker: ImageMaker, text: str, prompt: SamplePrompt, weights: list[float], seeds: list[int], *, lora_dir: Path | None = None
) -> WeightGrid:
    """The web UI's X/Y plot over a LoRA's weight: one column per weight, labelled, one row per seed.

    The first LoRA tag of `text` is the one varied; any other tags keep their weights. Each cell is an
    image at the prompt's size, exactly as `generate` makes it at that weight.
    """
    clean, tags = parse_lora_tags(text)
    if not tags:
        raise UserError("a weight grid needs a LoRA in the prompt", fix=f"add a tag like `{LORA_TAG_EXAMPLE}` to the prompt")
    if not weights:
        raise UserError("a weight grid needs at least one weight", fix="e.g. --weights 0,0.25,0.5,0.75,1")
    maker.load_loras(resolve_lora_files([name for name, _ in tags], lora_dir or Path.cwd()))
    varied, fixed = tags[0][0], dict(tags[1:])
    prompt = replace(prompt, prompt=clean)
    cells: list[list[Image.Image]] = [[] for _ in seeds]
    for weight in weights:
        maker.set_lora_weights({**fixed, varied: weight})
        for row, seed in enumerate(seeds):  # one image a call: a batch would round differently from `generate`
            cells[row].append(maker.images(prompt, [seed])[0])
    labels = [f"{varied}: {weight:g}" for weight in weights]
    image, label_height = _grid_image(cells, labels, prompt.width, prompt.height)
    return WeightGrid(image, varied, list(weights), list(seeds), cells, label_height)


def _grid_image(cells: list[list[Image.Image]], labels: list[str], width: int, height: int) -> tuple[Image.Image, int]:
    """Cells side by side under a row of labels (one per column), as the web UI's X/Y plot lays them out."""
    from PIL import Image, ImageDraw, ImageFont

    font_size = max(10, min(width, 512) // 16)
    font = ImageFont.load_default(size=font_size)
    label_height = font_size * 2
    grid = Image.new("RGB", (width * len(labels), label_height + height * len(cells)), "white")
    draw = ImageDraw.Draw(grid)
    for column, label in enumerate(labels):
        draw.text((column * width + width // 2, label_height // 2), label, fill="black", font=font, anchor="mm")
    for row, images in enumerate(cells):
        for column, image in enumerate(images):
            grid.paste(image, (column * width, label_height + row * height))
    return grid, label_height


# --- regularization images ---------------------------------------------------------------------------

REG_REPEATS = 1  # kohya's `1_<class>`: reg images are repeated to match the training count anyway
REG_PER_TRAINING_IMAGE = 5  # the article's advice: about 5x the training images


@dataclass
class RegResult:
    folder: Path  # out_dir / 1_<class>
    written: list[Path]
    kept: list[Path]  # images already there, from an earlier (interrupted) call


def reg_folder(out_dir: Path, class_prompt: str) -> Path:
    """`out_dir/1_<class>`, kohya's regularization folder for the class."""
    class_prompt = class_prompt.strip()
    if not class_prompt or any(c in class_prompt for c in '/\\:*?"<>|') or class_prompt in (".", ".."):
        raise UserError(
            f"`{class_prompt}` cannot be a folder name",
            fix="give the class as a plain word or words, e.g. --class bear",
        )
    return Path(out_dir) / f"{REG_REPEATS}_{class_prompt}"


def reg_image_path(folder: Path, index: int) -> Path:
    return folder / f"{index:04d}.png"


def default_reg_count(train_dir: Path) -> int:
    """The article's rule: 5 regularization images per training image (not counting repeats)."""
    from engine.dataset import plan_dataset

    return REG_PER_TRAINING_IMAGE * len(plan_dataset(Path(train_dir)).train_examples)


def generate_regularization(
    model: str | Path | ImageMaker,
    class_prompt: str,
    out_dir: Path,
    count: int,
    *,
    seed: int = 0,
    size: int | None = None,
    steps: int = DEFAULT_STEPS,
    cfg: float = DEFAULT_CFG,
    sampler: str = DEFAULT_SAMPLER,
    negative: str = "",
    batch_size: int = 1,
    device: str | None = None,
    tokenizer: str | Path | None = None,
    progress: Callable[[int, int, Path], None] | None = None,
) -> RegResult:
    """Regularization images of the class prompt alone, `out_dir/1_<class>/0000.png` ... `count`-1.

    Image `i` is seeded by (seed, i) and written atomically, so an interrupted call is resumed by
    calling again: the images already there are kept untouched and only the missing ones are made.
    `progress(done, total, path)` is called after each image written. `model` is a base model path, or
    an ImageMaker already holding one. `size` None: the model family's default resolution.
    """
    if count < 1:
        raise UserError(f"the number of regularization images must be at least 1 (got {count})", fix="e.g. --count 100")
    folder = reg_folder(out_dir, class_prompt)
    folder.mkdir(parents=True, exist_ok=True)
    _remove_stale_temp_files(folder)
    paths = [reg_image_path(folder, index) for index in range(count)]
    missing = [index for index, path in enumerate(paths) if not path.exists()]
    kept = [path for path in paths if path.exists()]
    result = RegResult(folder, [], kept)
    if not missing:
        return result
    maker = model if isinstance(model, ImageMaker) else ImageMaker.from_path(model, device=device, tokenizer=tokenizer)
    side = size or maker.model.family.default_resolution
    prompt = SamplePrompt(class_prompt.strip(), negative, side, side, steps, cfg, None, sampler)
    model_name = Path(maker.model.source).name
    for start in range(0, len(missing), max(1, batch_size)):
        batch = missing[start : start + max(1, batch_size)]
        seeds = [derive_seed(seed, "reg", index) % SEED_RANGE for index in batch]
        for index, image_seed, image in zip(batch, seeds, maker.images(prompt, seeds), strict=True):
            path = save_image(reg_image_path(folder, index), image, image_parameters(prompt, image_seed, model_name=model_name))
            result.written.append(path)
            if progress:
                progress(len(kept) + len(result.written), count, path)
    return result


def _remove_stale_temp_files(folder: Path) -> None:
    """Temp files of atomic writes from a killed call (`.0003.png.<random>.tmp`): never complete images."""
    for path in folder.glob(".*.png.*.tmp"):
        path.unlink(missing_ok=True)


def prompts_from_answers(samples: Any, resolution: int) -> list[SamplePrompt]:
    """The sample prompts of an answers file's `[samples]` section, its defaults applied."""
    size = samples.size or resolution
    defaults = SamplePrompt("", samples.negative, size, size, samples.steps, samples.cfg, None, samples.sampler)
    prompts = [parse_prompt_line(line, defaults, where="[samples] prompts") for line in samples.prompts]
    if samples.prompt_file is not None:
        prompts += read_prompt_file(samples.prompt_file, defaults)
    return prompts
