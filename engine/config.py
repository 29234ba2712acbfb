"""The answers file: one TOML schema for the wizard, `lora-wizard train FILE` and the library.

The file has a schema `version` and one section per concern:

    version = 1
    [model]    the base model
    [dataset]  training and regularization roots in kohya's folder convention
    [network]  the LoRA's size and what it trains
    [training] how long and how
    [checkpoints] when to write resumable checkpoints
    [samples]  sample images during training
    [output]   where the LoRA goes

Every key is validated; an unknown key is an error with a did-you-mean, never silently ignored.
Relative paths resolve against the folder of the file they are written in.
`examples/answers.toml` documents every key.
"""

from __future__ import annotations

import difflib
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from engine.buckets import BucketSettings
from engine.errors import AnswersError, UserError
from engine.files import atomic_write_text
from engine.prompts import parse_prompt_line
from engine.samplers import sampler_key

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

SCHEMA_VERSION = 1


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(_Section):
    path: Path = Field(description="Base model: a diffusers folder, or a .safetensors / .ckpt file")
    prediction: Literal["auto", "epsilon", "v_prediction"] = Field(
        "auto", description="What the UNet predicts; auto reads it from the model"
    )
    tokenizer: Path | None = Field(
        None, description="Folder holding the tokenizer, for a single-file model without one beside it"
    )
    vae: Path | None = Field(
        None,
        description="A VAE replacing the base model's, e.g. an fp16-safe one: a diffusers AutoencoderKL folder or a single file",
    )
    ae: Path | None = Field(None, description="FLUX.1 in single files: the autoencoder, ae.safetensors")
    clip_l: Path | None = Field(None, description="FLUX.1 in single files: the CLIP-L text encoder, clip_l.safetensors")
    t5xxl: Path | None = Field(None, description="FLUX.1 in single files: the T5-XXL text encoder, t5xxl_fp16.safetensors")
    t5_max_length: int | None = Field(
        None, ge=8, le=512, description="FLUX.1: T5 tokens per caption; empty = 512 for dev, 256 for schnell"
    )
    t5_attention_mask: bool = Field(False, description="FLUX.1: T5 and the transformer ignore padding (kohya's apply_t5_attn_mask)")


class DatasetSection(_Section):
    train_dir: Path = Field(description="Training root: holds <repeats>_<token> <class> folders")
    reg_dir: Path | None = Field(None, description="Regularization root: holds <repeats>_<class> folders")
    caption_extension: str = Field(".txt", description="Caption file next to an image, e.g. .txt")
    resolution: int | None = Field(
        None, ge=64, le=4096, description="Training size in pixels; empty = the model family's default"
    )
    prior_loss_weight: float = Field(1.0, ge=0.0, le=100.0, description="Weight of the regularization loss")
    buckets: bool = Field(False, description="Aspect-ratio buckets instead of square crops (kohya's enable_bucket)")
    min_bucket: int = Field(256, ge=64, le=4096, description="Smallest bucket side in pixels")
    max_bucket: int = Field(1024, ge=64, le=8192, description="Largest bucket side (raised to the resolution if smaller)")
    bucket_step: int = Field(64, ge=8, le=512, description="Bucket sides are multiples of this")
    bucket_no_upscale: bool = Field(False, description="Put small images in a bucket of their own size, never upscaled")
    shuffle_tags: bool = Field(False, description="Shuffle the comma-separated tags of each caption")
    keep_tokens: int = Field(0, ge=0, le=255, description="Tags at the start of a caption that are never shuffled")
    caption_dropout: float = Field(0.0, ge=0.0, le=1.0, description="Chance of training an image with an empty caption")
    flip: bool = Field(False, description="Mirror images at random (only for subjects that look the same mirrored)")

    @field_validator("caption_extension")
    @classmethod
    def _dotted(cls, value: str) -> str:
        if not value.startswith(".") or len(value) < 2:
            raise ValueError('must start with a dot, e.g. ".txt"')
        return value

    @field_validator("resolution", "bucket_step")
    @classmethod
    def _multiple_of_8(cls, value: int | None) -> int | None:
        if value is not None and value % 8:
            raise ValueError("must be a multiple of 8 (e.g. 512)")
        return value

    @property
    def bucket_settings(self) -> BucketSettings:
        return BucketSettings(self.buckets, self.min_bucket, self.max_bucket, self.bucket_step, self.bucket_no_upscale)

    @model_validator(mode="after")
    def _bucket_range(self) -> DatasetSection:
        if self.min_bucket > self.max_bucket:
            raise ValueError(f"min_bucket ({self.min_bucket}) is larger than max_bucket ({self.max_bucket})")
        return self


class NetworkSection(_Section):
    type: Literal["lora", "locon", "loha", "lokr"] = Field(
        "lora", description="lora; locon (+ the ResNets' 3x3 convs); loha (Hadamard); lokr (Kronecker)"
    )
    dora: bool = Field(False, description="DoRA: also learn each output's magnitude (lora and locon)")
    dim: int = Field(8, ge=1, le=1024, description="LoRA rank: higher keeps more detail, larger file")
    alpha: float | None = Field(None, gt=0, le=1024, description="LoRA alpha; empty = dim (scale 1)")
    conv_dim: int | None = Field(None, ge=1, le=1024, description="locon/loha/lokr: rank on the 3x3 convolutions; empty = dim")
    conv_alpha: float | None = Field(None, gt=0, le=1024, description="locon/loha/lokr: alpha on the convolutions; empty = conv_dim")
    factor: int | None = Field(None, ge=-1, le=1024, description="lokr: size of the small Kronecker factor; empty = -1 (near the square root)")
    full_matrix: bool | None = Field(None, description="lokr: keep both Kronecker factors whole (no rank; alpha unused)")
    dropout: float | None = Field(None, ge=0.0, lt=1.0, description="lora/locon: dropout on the LoRA layers' input; empty = 0")
    rank_dropout: float | None = Field(None, ge=0.0, lt=1.0, description="loha/lokr: dropout of whole output rows of the update; empty = 0")
    module_dropout: float | None = Field(None, ge=0.0, lt=1.0, description="loha/lokr: chance of skipping a layer's update in a step; empty = 0")
    train_text_encoder: bool = Field(True, description="Also train LoRA layers in the text encoder")
    init_from: Path | None = Field(None, description="Start from an existing kohya-format LoRA file of the same type")

    @model_validator(mode="after")
    def _settings_fit_the_type(self) -> NetworkSection:
        from engine.network.types import not_applicable

        problems = not_applicable(self.type, self.dora, set(self.model_fields_set), self.__dict__)
        if problems:
            raise ValueError("; ".join(problems))
        if self.factor == 0:
            raise ValueError("`factor` must be -1 (split near the square root) or a positive size")
        return self

    @property
    def effective_alpha(self) -> float:
        return float(self.dim if self.alpha is None else self.alpha)

    @property
    def effective_conv_dim(self) -> int:
        return self.dim if self.conv_dim is None else self.conv_dim

    @property
    def effective_conv_alpha(self) -> float:
        return float(self.effective_conv_dim if self.conv_alpha is None else self.conv_alpha)


class TrainingSection(_Section):
    epochs: int = Field(10, ge=1, le=100_000, description="Passes over the dataset")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps instead")
    batch_size: int = Field(1, ge=1, le=1024, description="Images per step (1 when VRAM is under 10 GB)")
    gradient_accumulation: int = Field(1, ge=1, le=1024, description="Batches per optimizer step")
    processes: int = Field(1, ge=1, le=1024, description="Data-parallel processes (GPUs); batch_size is per process")
    cpu_threads: int | None = Field(
        None, ge=1, le=1024, description="torch's CPU threads; empty = the cores free when the run starts (engine/cpu_threads.py)"
    )
    unet_lr: float = Field(1e-4, gt=0, le=1.0, description="Learning rate of the UNet LoRA")
    text_encoder_lr: float = Field(5e-5, gt=0, le=1.0, description="Learning rate of the text-encoder LoRA")
    text_encoder_2_lr: float | None = Field(
        None, gt=0, le=1.0, description="SDXL: learning rate of the second text encoder's LoRA; empty = text_encoder_lr"
    )
    lr_scheduler: Literal["constant", "cosine", "linear"] = Field("constant", description="LR schedule")
    warmup_steps: int = Field(0, ge=0, description="Steps of linear warm-up")
    optimizer: Literal["adamw", "adamw8bit", "prodigy"] = Field("adamw", description="Optimizer")
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = Field(
        "auto", description="auto = bf16 where the GPU supports it, else fp16; no on a CPU"
    )
    gradient_checkpointing: bool = Field(False, description="Trade speed for memory")
    compile: bool = Field(False, description="torch.compile the UNet: faster steps after a slow first one (minutes)")
    channels_last: bool = Field(
        False, description="On a CUDA GPU, keep the UNet's weights in channels_last (NHWC) layout; measure before relying on it"
    )
    max_grad_norm: float = Field(1.0, ge=0.0, description="Clip the gradient norm to this (0 = no clipping)")
    seed: int = Field(42, ge=0, le=2**32 - 1, description="Seed for noise, timesteps and data order")
    clip_skip: int = Field(1, ge=1, le=12, description="Use the text encoder's N-th last layer (2 for anime models)")
    noise_offset: float = Field(0.0, ge=0.0, le=1.0, description="Noise offset (0.05-0.1 for darker/brighter)")
    min_snr_gamma: float | None = Field(None, gt=0, le=100, description="Min-SNR loss weighting (5 is common)")
    cache_latents: Literal["memory", "disk", "off"] = Field(
        "memory", description="Encode images once: in memory, on disk beside them, or every step"
    )
    latents: Literal["sample", "mean"] = Field(
        "sample", description="Cached latent: a seeded sample of the VAE's distribution, or its mean"
    )
    log_every_steps: int = Field(10, ge=1, le=10_000, description="Read the loss back from the device every N steps")
    save_every_epochs: int = Field(0, ge=0, description="Also write <name>-000001.safetensors every N epochs")
    timestep_sampling: Literal["shift", "sigmoid", "uniform"] = Field(
        "shift", description="FLUX.1: how noise levels are drawn (kohya's timestep_sampling)"
    )
    discrete_flow_shift: float = Field(3.1582, gt=0, le=100, description="FLUX.1: the shift of `shift` sampling")
    sigmoid_scale: float = Field(1.0, gt=0, le=100, description="FLUX.1: scale of the normal draw in shift and sigmoid sampling")
    guidance_scale: float = Field(1.0, ge=0, le=100, description="FLUX.1 dev: the guidance the transformer is told while training")
    fp8_base: bool = Field(False, description="FLUX.1: store the frozen transformer in fp8, compute in bf16 (kohya's fp8_base)")
    offload_blocks: bool = Field(
        False, description="FLUX.1 on a GPU: keep transformer blocks in host memory, each brought over when it runs (needs gradient_checkpointing)"
    )

    @model_validator(mode="after")
    def _check(self) -> TrainingSection:
        if self.warmup_steps and self.max_steps and self.warmup_steps > self.max_steps:
            raise ValueError("warmup_steps is larger than max_steps")
        return self

    @property
    def effective_batch(self) -> int:
        return effective_batch(self.batch_size, self.processes, self.gradient_accumulation)


def effective_batch(batch_size: int, processes: int, gradient_accumulation: int) -> int:
    """Images per optimizer step: batch size x processes x gradient accumulation (kohya's total
    batch size: each process takes `batch_size` images of every batch)."""
    return batch_size * processes * gradient_accumulation


class SamplesSection(_Section):
    prompts: list[str] = Field(default_factory=list, description="Sample prompts in kohya's syntax: prompt --n neg --w 512 --h 512 --s 28 --l 7.5 --d 42")
    prompt_file: Path | None = Field(None, description="A kohya prompt file (.txt, one prompt a line), added after `prompts`")
    every_steps: int = Field(0, ge=0, description="Sample every N steps (0 = off)")
    every_epochs: int = Field(0, ge=0, description="Sample at the end of every N epochs (0 = off)")
    at_start: bool = Field(False, description="Also sample before the first step (the base model with an empty LoRA)")
    sampler: str = Field("euler_a", description="Default sampler: euler_a, euler, dpmpp_2m, dpmpp_2m_karras, heun, ddim, pndm")
    steps: int = Field(28, ge=1, le=1000, description="Default inference steps")
    cfg: float = Field(7.5, ge=0.0, le=50.0, description="Default classifier-free guidance scale")
    negative: str = Field("", description="Default negative prompt")
    size: int = Field(0, ge=0, le=4096, description="Default sample size in pixels (0 = the training resolution)")

    @field_validator("sampler")
    @classmethod
    def _known_sampler(cls, value: str) -> str:
        try:
            return sampler_key(value)
        except UserError as exc:
            raise ValueError(f"{exc.message} ({exc.fix})") from None

    @field_validator("prompts")
    @classmethod
    def _valid_prompt_lines(cls, value: list[str]) -> list[str]:
        for line in value:
            try:
                parse_prompt_line(line)
            except UserError as exc:
                raise ValueError(exc.message) from None
        return value

    @property
    def enabled(self) -> bool:
        return bool((self.prompts or self.prompt_file) and (self.every_steps or self.every_epochs or self.at_start))


class CheckpointSection(_Section):
    every_steps: int = Field(0, ge=0, description="Write a resumable checkpoint every N steps (0 = only at epoch ends)")
    every_epoch: bool = Field(True, description="Write a checkpoint at the end of every epoch")
    keep_last: int = Field(2, ge=1, le=1000, description="Checkpoints kept; older ones are deleted")


class OutputSection(_Section):
    dir: Path = Field(Path("output"), description="Folder for the LoRA file and the run folder")
    name: str = Field(description="File name of the LoRA without extension, e.g. usu_bear")
    dtype: Literal["fp16", "bf16", "fp32"] = Field("fp16", description="Precision of the saved LoRA")
    overwrite: bool = Field(False, description="Replace an existing LoRA file of the same name")
    tensorboard: bool = Field(False, description="Also write TensorBoard logs (loss, lr, samples) to <run folder>/tensorboard")

    @field_validator("name")
    @classmethod
    def _plain_file_name(cls, value: str) -> str:
        bad = set('/\\:*?"<>|') & set(value)
        if not value.strip() or bad or value in (".", ".."):
            raise ValueError(f"must be a plain file name, without {''.join(sorted(bad)) or 'path parts'}")
        if value.endswith(".safetensors"):
            raise ValueError("is given without the .safetensors extension")
        return value


class Answers(_Section):
    version: int = Field(SCHEMA_VERSION, description="Schema version of this file")
    model: ModelSection
    dataset: DatasetSection
    network: NetworkSection = Field(default_factory=NetworkSection)
    training: TrainingSection = Field(default_factory=TrainingSection)
    checkpoints: CheckpointSection = Field(default_factory=CheckpointSection)
    samples: SamplesSection = Field(default_factory=SamplesSection)
    output: OutputSection

    @model_validator(mode="after")
    def _check_version(self) -> Answers:
        if self.version != SCHEMA_VERSION:
            raise ValueError(f"version {self.version} is not supported; this lora-wizard reads version {SCHEMA_VERSION}")
        return self

    @model_validator(mode="after")
    def _module_dropout_on_one_process(self) -> Answers:
        # Data-parallel training reduces every layer's gradient in every step; a layer skipped at
        # random in one process would leave the others waiting.
        if self.network.module_dropout and self.training.processes > 1:
            raise ValueError(
                "`network.module_dropout` skips layers at random in each process, which data-parallel training "
                "(`training.processes` > 1) cannot do: leave module_dropout out, or train with one process"
            )
        return self

    @property
    def lora_path(self) -> Path:
        return self.output.dir / f"{self.output.name}.safetensors"

    def resolve_paths(self, base: Path) -> Answers:
        """A copy with every relative path made absolute against `base`."""
        data = self.model_dump()
        for section, key in PATH_KEYS:
            value = data[section][key]
            if value is not None:
                data[section][key] = _absolute(Path(value), base)
        return Answers.model_validate(data)


PATH_KEYS = [
    ("model", "path"),
    ("model", "tokenizer"),
    ("model", "vae"),
    ("model", "ae"),
    ("model", "clip_l"),
    ("model", "t5xxl"),
    ("dataset", "train_dir"),
    ("dataset", "reg_dir"),
    ("network", "init_from"),
    ("samples", "prompt_file"),
    ("output", "dir"),
]
# Paths that must exist when the answers are loaded for a run (output.dir is created on demand).
EXISTING_PATH_KEYS = [key for key in PATH_KEYS if key != ("output", "dir")]


def _absolute(path: Path, base: Path) -> Path:
    path = path.expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def _schema_of(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that owns the key at `loc` (used to suggest spellings)."""
    model: type[BaseModel] = Answers
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def _describe(error: dict[str, Any]) -> str:
    loc = tuple(error["loc"])
    key = ".".join(str(p) for p in loc) or "(file)"
    kind = error["type"]
    if kind == "extra_forbidden":
        model = _schema_of(loc)
        known = list(model.model_fields) if model else []
        close = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
        hint = f"did you mean `{close[0]}`?" if close else f"known keys here: {', '.join(known)}"
        return f"unknown key `{key}`: {hint}"
    if kind == "missing":
        return f"`{key}` is required but missing"
    value = error.get("input")
    shown = repr(value) if not isinstance(value, dict) else "a table"
    message = error["msg"].removeprefix("Value error, ")
    return f"`{key}` = {shown}: {message}" if loc else message


def answers_from_dict(data: dict[str, Any], *, source: str | Path = "answers") -> Answers:
    """Validate a parsed answers mapping; every problem is listed in one `AnswersError`."""
    try:
        return Answers.model_validate(data)
    except ValidationError as exc:
        problems = [_describe(e) for e in exc.errors()]
        raise AnswersError(
            "\n  ".join(["the answers are not valid:", *problems]),
            where=source,
            fix="correct the keys named above; examples/answers.toml documents every key",
        ) from None


def load_answers(path: str | Path, *, check_paths: bool = True) -> Answers:
    """Read, validate and resolve an answers file. Raises `AnswersError` with a one-screen message."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AnswersError("no such answers file", where=path, fix="check the path, or run `lora-wizard` to write one") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AnswersError(f"cannot read the answers file: {exc}", where=path) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise AnswersError(f"not valid TOML: {exc}", where=path, fix="answers files are TOML: key = value under [section] headers") from None
    answers = answers_from_dict(data, source=path).resolve_paths(path.resolve().parent)
    if check_paths:
        check_existing_paths(answers, source=path)
    return answers


def check_existing_paths(answers: Answers, *, source: str | Path = "answers") -> None:
    """Every input path named in the answers exists."""
    for section, key in EXISTING_PATH_KEYS:
        value = getattr(getattr(answers, section), key)
        if value is not None and not Path(value).exists():
            raise AnswersError(
                f"`{section}.{key}`: nothing at {value}",
                where=source,
                fix="check the path (relative paths are read from the answers file's folder)",
            )


def answers_to_toml(answers: Answers) -> str:
    """The answers as TOML text, None values left out (they mean 'the default')."""
    import tomli_w

    data = answers.model_dump(mode="json", exclude_none=True)
    return tomli_w.dumps(data)


def save_answers(answers: Answers, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write the answers file atomically; an existing file is kept unless `overwrite`."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise AnswersError("an answers file already exists here", where=path, fix="choose another name, or allow overwriting")
    atomic_write_text(path, answers_to_toml(answers))
    return path
