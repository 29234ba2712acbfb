"""A WD14-style image tagger: SmilingWolf's wd-*-tagger ONNX models, run with onnxruntime.

A tagger is two files: `model.onnx` (an image in, one probability per tag out) and
`selected_tags.csv` (columns tag_id, name, category, count; category 0 general, 4 character,
9 rating). They come from a local folder, or from a Hugging Face repository, downloaded once into
the Hugging Face cache (huggingface_hub, with its progress bar).

    tagger = Tagger.load("SmilingWolf/wd-vit-tagger-v3")        # or a folder holding both files
    scores = tagger.predict(np.stack([tagger.preprocess(image)]))
    tagger.vocabulary.select(scores[0], general=0.35, character=0.85)

The input is what the models were trained on (SmilingWolf's and kohya's taggers): the image
padded to a square with white, resized to the model's input size (read from the graph, 448 for
the v3 models), BGR, float32 0-255, NHWC. No torch is needed.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from engine.errors import UserError

if TYPE_CHECKING:
    import numpy as np
    from PIL.Image import Image

DEFAULT_TAGGER = "SmilingWolf/wd-vit-tagger-v3"
KNOWN_TAGGERS = (
    "SmilingWolf/wd-vit-tagger-v3",
    "SmilingWolf/wd-swinv2-tagger-v3",
    "SmilingWolf/wd-convnext-tagger-v3",
    "SmilingWolf/wd-eva02-large-tagger-v3",
)
MODEL_FILE = "model.onnx"
TAGS_FILE = "selected_tags.csv"
GENERAL, CHARACTER, RATING = 0, 4, 9
INSTALL_HINT = "pip install 'lora-wizard[captions]' (onnxruntime; for a CUDA GPU: pip install onnxruntime-gpu)"
# Tags that are faces drawn with underscores: they keep them when underscores become spaces
# (SmilingWolf's own tagger demo keeps the same list).
KAOMOJI = frozenset(
    ["0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<", "3_3", "6_9", ">_o", "@_@", "^_^", "o_o", "u_u", "x_x", "|_|", "||_||"]
)

Device = Literal["auto", "cpu", "cuda"]


class TaggerError(UserError):
    """The tagger model cannot be found, read or run."""


@dataclass(frozen=True)
class ScoredTag:
    name: str
    score: float
    category: int


@dataclass(frozen=True)
class TagVocabulary:
    """The tags a model scores, in the order of its outputs."""

    names: tuple[str, ...]
    categories: tuple[int, ...]

    def select(self, scores: np.ndarray, *, general: float, character: float) -> list[ScoredTag]:
        """Character tags at or above `character`, then general tags at or above `general`, each
        by score, highest first. Rating tags are never chosen."""
        chosen = [
            ScoredTag(name, float(score), category)
            for name, category, score in zip(self.names, self.categories, scores.tolist(), strict=True)
            if (category == CHARACTER and score >= character) or (category == GENERAL and score >= general)
        ]
        return sorted(chosen, key=lambda tag: (tag.category != CHARACTER, -tag.score))


def read_vocabulary(path: Path) -> TagVocabulary:
    """The tags of `selected_tags.csv`."""
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError) as exc:
        raise TaggerError(f"cannot read the tag list: {exc}", where=path, fix=f"download {TAGS_FILE} again") from None
    if not rows or not {"name", "category"} <= set(rows[0]):
        raise TaggerError(
            "the tag list has no `name` and `category` columns",
            where=path,
            fix=f"use the model's own {TAGS_FILE} (columns tag_id,name,category,count)",
        )
    try:
        return TagVocabulary(tuple(row["name"] for row in rows), tuple(int(row["category"]) for row in rows))
    except (TypeError, ValueError):
        raise TaggerError("a tag's category is not a number", where=path, fix=f"use the model's own {TAGS_FILE}") from None


def tag_text(name: str, *, underscores_to_spaces: bool) -> str:
    """A tag as written into a caption: `long_hair` -> `long hair` (kaomoji keep theirs)."""
    if underscores_to_spaces and name not in KAOMOJI:
        return name.replace("_", " ")
    return name


# ---------------------------------------------------------------------------------------------
# Finding the two files


def is_repo_id(spec: str) -> bool:
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not spec.startswith((".", "~"))


def locate_model(spec: str | Path, *, cache_dir: Path | None = None, progress: type | None = None) -> tuple[Path, Path]:
    """(model.onnx, selected_tags.csv) of a local folder (or a .onnx file with the list beside
    it), or of a Hugging Face repository, downloaded into the cache on first use. `progress` is a
    tqdm class for the download bars (default: huggingface_hub's, on stderr)."""
    path = Path(spec).expanduser()
    if path.exists():
        return _local_files(path)
    if not is_repo_id(str(spec)):
        raise TaggerError(
            "no such tagger folder, and not a Hugging Face repository id",
            where=spec,
            fix=f"give a folder holding {MODEL_FILE} and {TAGS_FILE}, or a repository such as {DEFAULT_TAGGER}",
        )
    return _downloaded_files(str(spec), cache_dir, progress)


def _local_files(path: Path) -> tuple[Path, Path]:
    model = path if path.is_file() else path / MODEL_FILE
    tags = model.parent / TAGS_FILE
    for needed in (model, tags):
        if not needed.is_file():
            raise TaggerError(
                f"{needed.name} is missing beside the tagger model",
                where=needed,
                fix=f"put {MODEL_FILE} and {TAGS_FILE} of the same tagger (e.g. {DEFAULT_TAGGER}) in {model.parent}",
            )
    return model, tags


def _downloaded_files(repo: str, cache_dir: Path | None, progress: type | None) -> tuple[Path, Path]:
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    files = []
    for name in (TAGS_FILE, MODEL_FILE):  # the small file first: a wrong repository fails fast
        try:
            files.append(Path(hf_hub_download(repo, name, cache_dir=cache_dir, tqdm_class=progress)))
        except LocalEntryNotFoundError:
            raise missing_model_error(repo, cache_dir or Path(constants.HF_HUB_CACHE), offline=constants.HF_HUB_OFFLINE) from None
        except RepositoryNotFoundError:
            raise TaggerError("no such repository on Hugging Face", where=repo, fix=f"check the name, e.g. {DEFAULT_TAGGER}") from None
        except HfHubHTTPError as exc:
            raise TaggerError(f"the download of {name} failed: {exc}", where=repo, fix="try again, or download the files by hand") from None
    tags, model = files
    return model, tags


def missing_model_error(repo: str, cache: Path, *, offline: bool) -> TaggerError:
    """What to download, and where to put it, when the model cannot be downloaded here."""
    why = "downloads are off (HF_HUB_OFFLINE is set)" if offline else "it cannot be downloaded (no connection to huggingface.co)"
    urls = " and ".join(f"https://huggingface.co/{repo}/resolve/main/{name}" for name in (MODEL_FILE, TAGS_FILE))
    return TaggerError(
        f"this tagger is not in the Hugging Face cache ({cache}) and {why}",
        where=repo,
        fix=(
            f"download {urls} on a machine with internet (or `hf download {repo} {MODEL_FILE} {TAGS_FILE} --local-dir DIR`), "
            f"put both files in one folder here and give that folder as the tagger (--model DIR); "
            f"or connect this machine{' and unset HF_HUB_OFFLINE' if offline else ''} to download it into the cache"
        ),
    )


# ---------------------------------------------------------------------------------------------
# Running it


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise TaggerError("onnxruntime is not installed: the tagger needs it", fix=INSTALL_HINT) from None
    return onnxruntime


def providers_for(device: Device, available: list[str]) -> list[str]:
    if device == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise TaggerError(
                "onnxruntime here has no CUDA provider",
                fix="pip install onnxruntime-gpu (in place of onnxruntime), or tag on the CPU (--device cpu)",
            )
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "auto" and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


@dataclass
class Tagger:
    session: Any  # onnxruntime.InferenceSession
    vocabulary: TagVocabulary
    input_name: str
    size: int  # input side in pixels, from the graph
    channels_last: bool  # NHWC (the wd taggers) or NCHW
    fixed_batch: int | None  # a graph whose batch dimension is a number takes exactly that many
    source: str

    @classmethod
    def load(
        cls,
        spec: str | Path = DEFAULT_TAGGER,
        *,
        device: Device = "auto",
        cache_dir: Path | None = None,
        progress: type | None = None,
        threads: int | None = None,
    ) -> Tagger:
        """`threads`: onnxruntime's threads for one model call (default: one per core)."""
        ort = import_onnxruntime()
        model, tags = locate_model(spec, cache_dir=cache_dir, progress=progress)
        vocabulary = read_vocabulary(tags)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            session = ort.InferenceSession(str(model), options, providers=providers_for(device, ort.get_available_providers()))
        except TaggerError:
            raise
        except Exception as exc:  # onnxruntime raises its own exception types for a damaged file
            raise TaggerError(f"onnxruntime cannot load the model: {exc}", where=model, fix=f"download {MODEL_FILE} again") from None
        tagger = cls(session, vocabulary, *_input_layout(session, model), str(spec))
        _check_outputs(session, vocabulary, model, tags)
        return tagger

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0]

    def preprocess(self, image: Image) -> np.ndarray:
        """An RGB image as the model's input: padded square on white, resized, BGR float 0-255."""
        import numpy as np
        from PIL import Image as PILImage

        side = max(image.size)
        square = PILImage.new("RGB", (side, side), (255, 255, 255))
        square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
        if side != self.size:
            square = square.resize((self.size, self.size), PILImage.Resampling.BICUBIC)
        array = np.asarray(square, dtype=np.float32)[:, :, ::-1]
        return np.ascontiguousarray(array if self.channels_last else array.transpose(2, 0, 1))

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Scores (images x tags) of a stack of preprocessed images."""
        import numpy as np

        if self.fixed_batch is not None and len(batch) != self.fixed_batch:
            return np.concatenate([self.predict(batch[i : i + 1]) for i in range(len(batch))])
        return np.asarray(self.session.run(None, {self.input_name: batch})[0], dtype=np.float32)


def _input_layout(session: Any, model: Path) -> tuple[str, int, bool, int | None]:
    """(input name, side, channels last, fixed batch) read from the graph's input."""
    graph_input = session.get_inputs()[0]
    shape = list(graph_input.shape)
    if len(shape) == 4 and shape[3] == 3 and isinstance(shape[1], int) and shape[1] == shape[2]:
        channels_last, side = True, shape[1]
    elif len(shape) == 4 and shape[1] == 3 and isinstance(shape[2], int) and shape[2] == shape[3]:
        channels_last, side = False, shape[2]
    else:
        raise TaggerError(
            f"the model's input {graph_input.name} has shape {shape}, not a square RGB image batch",
            where=model,
            fix="use a WD14-style tagger (e.g. SmilingWolf/wd-vit-tagger-v3)",
        )
    batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
    return graph_input.name, side, channels_last, batch


def _check_outputs(session: Any, vocabulary: TagVocabulary, model: Path, tags: Path) -> None:
    scores = session.get_outputs()[0].shape[-1]
    if isinstance(scores, int) and scores != len(vocabulary.names):
        raise TaggerError(
            f"the model scores {scores} tags but {tags.name} lists {len(vocabulary.names)}",
            where=model,
            fix=f"use the {TAGS_FILE} that came with this model",
        )
