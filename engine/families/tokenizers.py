"""Tokenizers for single-file models, which carry none: given in the answers file, beside the file,
in the Hugging Face cache, or fetched once into it (a few small files, no weights).

A diffusers folder has its own (`tokenizer/`); is_tokenizer_folder checks one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import ModelFileError
from engine.messages import Message

# Where a tokenizer can come from when the file carries none: (repository, subfolder).
HF_TOKENIZERS = {
    "sd1": ("openai/clip-vit-large-patch14", ""),
    "sd2": ("stabilityai/stable-diffusion-2-1", "tokenizer"),
    "sdxl": ("stabilityai/stable-diffusion-xl-base-1.0", "tokenizer"),
}
OWN_TOKENIZERS = Message("model.tokenizer.own_folders", "the model's own tokenizer/ and tokenizer_2/ folders")
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")
# Downloads that failed in this process: the wizard inspects the model often, a dead network costs once.
_FAILED_DOWNLOADS: dict[str, str] = {}


def is_tokenizer_folder(folder: Path) -> bool:
    return folder.is_dir() and (
        ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()) or (folder / "tokenizer.json").is_file()
    )


def hugging_face_cache_dir() -> Path:
    """The hub cache, read from the environment now (huggingface_hub reads it once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hugging_face_offline() -> bool:
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return any(flag.strip().lower() in {"1", "true", "yes", "on"} for flag in flags)


def _cached_tokenizer(family: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    repo, subfolder = HF_TOKENIZERS[family]
    vocab_name = f"{subfolder}/vocab.json" if subfolder else "vocab.json"
    found = try_to_load_from_cache(repo, vocab_name, cache_dir=hugging_face_cache_dir())
    if isinstance(found, str) and is_tokenizer_folder(Path(found).parent):
        return Path(found).parent
    return None


def _download_tokenizer(family: str) -> Path | None:
    """Fetch the family's tokenizer (a few files, no weights) into the Hugging Face cache."""
    from huggingface_hub import snapshot_download

    repo, subfolder = HF_TOKENIZERS[family]
    patterns = [f"{subfolder}/{name}" if subfolder else name for name in TOKENIZER_FILES]
    folder = Path(snapshot_download(repo, allow_patterns=patterns, cache_dir=hugging_face_cache_dir(), etag_timeout=10))
    folder = folder / subfolder if subfolder else folder
    return folder if is_tokenizer_folder(folder) else None


@dataclass
class TokenizerSearch:
    folder: Path | None
    looked: list[str]  # every place tried, with what was found there


def find_tokenizer(path: Path, family: str, tokenizer_dir: Path | None) -> TokenizerSearch:
    """Where the tokenizer of a single-file model is: given, beside it, in the HF cache, or fetched once."""
    if tokenizer_dir is not None:
        for candidate in (tokenizer_dir, tokenizer_dir / "tokenizer"):
            if is_tokenizer_folder(candidate):
                return TokenizerSearch(candidate, [f"{candidate} (from the answers file)"])
        raise ModelFileError(
            "this tokenizer folder holds no CLIP tokenizer (vocab.json and merges.txt)",
            where=tokenizer_dir,
            fix="point `[model] tokenizer` at a folder with vocab.json and merges.txt (a diffusers model's `tokenizer/` folder)",
        )
    looked = []
    for candidate in (path.parent / "tokenizer", path.parent / path.stem / "tokenizer"):
        if is_tokenizer_folder(candidate):
            return TokenizerSearch(candidate, looked + [Message("model.tokenizer.found", "{folder} (found)", folder=str(candidate))])
        looked.append(f"{candidate} (no vocab.json + merges.txt)")
    repo, subfolder = HF_TOKENIZERS[family]
    where = f"{repo}{'/' + subfolder if subfolder else ''}"
    cached = _cached_tokenizer(family)
    if cached is not None:
        return TokenizerSearch(cached, looked + [Message("model.tokenizer.cache", "{folder} (Hugging Face cache)", folder=str(cached))])
    looked.append(f"the Hugging Face cache {hugging_face_cache_dir()} ({where}: not there)")
    if hugging_face_offline():
        looked.append(f"download of {where}: not tried, HF_HUB_OFFLINE is set")
    elif where in _FAILED_DOWNLOADS:
        looked.append(f"download of {where}: failed earlier ({_FAILED_DOWNLOADS[where]})")
    else:
        try:
            downloaded = _download_tokenizer(family)
        except Exception as exc:  # any network or hub failure: report it among the places looked
            _FAILED_DOWNLOADS[where] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
            looked.append(f"download of {where}: failed ({_FAILED_DOWNLOADS[where]})")
        else:
            if downloaded is not None:
                return TokenizerSearch(downloaded, looked + [Message("model.tokenizer.downloaded", "{folder} (downloaded into the Hugging Face cache)", folder=str(downloaded))])
            looked.append(f"download of {where}: it has no tokenizer files")
    return TokenizerSearch(None, looked)


def missing_tokenizer_error(path: Path, family: str, search: TokenizerSearch) -> ModelFileError:
    repo, _ = HF_TOKENIZERS[family]
    places = "\n".join(f"    - {place}" for place in search.looked)
    return ModelFileError(
        f"no tokenizer for this model (a single file carries none); looked in:\n{places}",
        where=path,
        fix=(
            f'add `tokenizer = "/path/to/tokenizer"` under [model] in the answers file, or copy a tokenizer folder '
            f"(vocab.json, merges.txt) to {path.parent / 'tokenizer'}, or run once with internet access to cache {repo}"
        ),
    )


def load_tokenizer(folder: Path, text_encoder_vocab: int, path: Path) -> Any:
    from transformers import CLIPTokenizer

    # CLIPTokenizer(vocab_file=...) ignores its files in transformers 5; from_pretrained(folder) works.
    try:
        tokenizer = CLIPTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"cannot load the tokenizer: {exc}", where=folder, fix="give a complete tokenizer folder") from None
    if len(tokenizer) > text_encoder_vocab:
        raise ModelFileError(
            f"the tokenizer has {len(tokenizer)} tokens but the model's text encoder knows only {text_encoder_vocab}",
            where=folder,
            fix=f"use the tokenizer that belongs to {path.name}",
        )
    return tokenizer
