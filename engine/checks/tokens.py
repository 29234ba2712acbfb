"""The instance token, as the base model's tokenizer sees it: one piece or several, rare or frequent,
and the seed article's suggestions.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.checks.dataset_walk import Problem, ScannedConcept
from engine.errors import ModelFileError

# The seed article's instance tokens: short words the model does not know.
SUGGESTED_TOKENS = ("shs", "sts", "scs", "cpc", "coc", "cic", "msm", "nen", "usu", "ici", "lvl")
# CLIP's byte-level BPE vocabulary: the 256 byte characters and the same with `</w>`, then one
# token per merge in the order the merges were learned (most frequent pair first), then the
# special tokens. A whole word whose id falls in the first quarter of the merges is frequent:
# in SD's CLIP that is ids below ~12,700 (dog 1929, bear 4298); ids below 512 are single letters.
BYTE_LEVEL_TOKENS = 512
COMMON_TOKEN_SHARE = 0.25


@dataclass(frozen=True)
class TokenVerdict:
    """How a tokenizer reads one word."""

    word: str
    pieces: tuple[str, ...]
    token_id: int | None  # when the word is one piece
    frequency_rank: float | None  # where that id falls among the merges: 0 most frequent, 1 rarest

    @property
    def is_single(self) -> bool:
        return len(self.pieces) == 1

    @property
    def is_common(self) -> bool:
        return self.frequency_rank is not None and self.frequency_rank < COMMON_TOKEN_SHARE


def judge_token(tokenizer: Any, word: str) -> TokenVerdict:
    """Whether `word` is one token of a CLIP tokenizer, and how frequent that token is."""
    pieces = tuple(tokenizer.tokenize(word))
    if len(pieces) != 1:
        return TokenVerdict(word, pieces, None, None)
    token_id = int(tokenizer.convert_tokens_to_ids(pieces[0]))
    specials = {i for i in tokenizer.all_special_ids if i >= BYTE_LEVEL_TOKENS}
    merges = max(1, tokenizer.vocab_size - BYTE_LEVEL_TOKENS - len(specials))
    rank = min(1.0, max(0.0, (token_id - BYTE_LEVEL_TOKENS) / merges))  # a single letter counts as most frequent
    return TokenVerdict(word, pieces, token_id, rank)


def suggest_tokens(tokenizer: Any = None, *, exclude: str = "") -> list[str]:
    """The seed article's tokens; with a tokenizer, those it keeps whole and rare."""
    candidates = [t for t in SUGGESTED_TOKENS if t != exclude.lower()]
    if tokenizer is None:
        return candidates
    good = [t for t in candidates if (v := judge_token(tokenizer, t)).is_single and not v.is_common]
    return good or candidates


def token_problems(train: list[ScannedConcept], tokenizer: Any) -> Iterator[Problem]:
    seen: set[str] = set()
    for concept in train:
        token = concept.instance_token
        if token is None or token.lower() in seen:
            continue
        seen.add(token.lower())
        verdict = judge_token(tokenizer, token)
        fix = f"rename the folder with a short rare token the tokenizer keeps whole, e.g. {' '.join(suggest_tokens(tokenizer, exclude=token))}"
        if not verdict.is_single:
            yield Problem(
                "warning", "token.pieces", concept.folder,
                f"the model's tokenizer splits the instance token `{token}` into {len(verdict.pieces)} pieces ({' '.join(verdict.pieces)}): "
                "what the LoRA learns is spread over them, and each piece keeps its own meaning",
                fix,
            )
        elif verdict.is_common:
            yield Problem(
                "warning", "token.common", concept.folder,
                f"the instance token `{token}` is a frequent token for the model (id {verdict.token_id}, in the most frequent "
                f"{COMMON_TOKEN_SHARE:.0%} of its vocabulary): training changes what it means in every prompt",
                fix,
            )


# ---------------------------------------------------------------------------------------------
# The tokenizer of a base model


def load_model_tokenizer(model: str | Path, tokenizer_dir: str | Path | None = None) -> tuple[Any, int]:
    """The CLIP tokenizer of a base model, read offline without its weights, and the default
    resolution of the model's family. Raises `ModelFileError` when either cannot be read."""
    from transformers import CLIPTokenizer

    from engine.families import inspect_base_model
    from engine.families.registry import FAMILIES

    info = inspect_base_model(model, tokenizer_dir)
    if info.tokenizer is None:
        raise ModelFileError(
            f"no tokenizer found for this model: {info.tokenizer_note}",
            where=info.source,
            fix="set `[model] tokenizer` to a folder holding vocab.json and merges.txt",
        )
    try:
        tokenizer = CLIPTokenizer.from_pretrained(info.tokenizer)
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"the tokenizer cannot be read: {exc}", where=info.tokenizer, fix="copy the complete model folder") from None
    family = FAMILIES.get(info.family)
    return tokenizer, family.default_resolution if family else 512
