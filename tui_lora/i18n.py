"""Every user-visible string of the app, in English and Japanese, through one catalogue.

Messages live in TOML catalogues, `tui_lora/locale/<language>.toml`, keyed by a message id: the
table path and key (`[home] title = "..."` is `home.title`). `t("home.title")` gives the text in
the current language, `{name}` placeholders filled from keyword arguments:

    t("review.saved", path="answers.toml")

A message that counts something is a table of forms, chosen by the `count` value:
`images = { one = "{count} image", other = "{count} images" }`, then `t("count.images", count=n)`.

English is complete by definition (it is the source); a test fails when the Japanese catalogue
lacks a message, has an empty one, or uses other placeholders. The language comes from a
setting, else the locale (LC_ALL, LC_MESSAGES, LANG: `ja_JP.UTF-8` is Japanese), else English.

Text from the engine (check results, dataset problems, model notes) is English, as the command
line prints it. Where the engine gives it a message id (`engine.messages.Message`), the wizard
shows the current language's text for that id (`[engine]` tables; `engine_text`); other engine
text stays English.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

LOCALE_DIR = Path(__file__).parent / "locale"
LANGUAGES: dict[str, str] = {"en": "English", "ja": "日本語"}  # code -> the language's own name
SOURCE_LANGUAGE = "en"
# Locale variables in POSIX precedence: the first one set decides.
LOCALE_VARIABLES = ("LC_ALL", "LC_MESSAGES", "LANG")

_current = SOURCE_LANGUAGE


@cache
def catalogue(language: str) -> dict[str, str]:
    """The messages of one language, flattened to `section.key` ids."""
    with (LOCALE_DIR / f"{language}.toml").open("rb") as handle:
        return dict(_flatten(tomllib.load(handle)))


def _flatten(table: Mapping[str, Any], prefix: str = ""):
    for key, value in table.items():
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", str(value)


def language_from_locale(environ: Mapping[str, str] | None = None) -> str:
    """The catalogue language the locale asks for: `ja_JP.UTF-8` -> `ja`; anything else -> `en`."""
    environ = os.environ if environ is None else environ
    for variable in LOCALE_VARIABLES:
        value = environ.get(variable, "")
        if value:
            code = value.split(".")[0].split("_")[0].split("@")[0].lower()
            return code if code in LANGUAGES else SOURCE_LANGUAGE
    return SOURCE_LANGUAGE


def choose_language(setting: str | None, environ: Mapping[str, str] | None = None) -> str:
    """The setting when it names a known language, else the locale's."""
    return setting if setting in LANGUAGES else language_from_locale(environ)


def set_language(language: str) -> None:
    global _current
    if language not in LANGUAGES:
        raise ValueError(f"unknown language {language!r}; known: {', '.join(LANGUAGES)}")
    _current = language


def current_language() -> str:
    return _current


def t(message_id: str, **values: Any) -> str:
    """The message in the current language (English where a translation is missing; the id
    itself where the message is unknown, so a slip shows instead of crashing the app)."""
    if "count" in values and f"{message_id}.other" in catalogue(SOURCE_LANGUAGE):
        message_id = f"{message_id}.{plural_form(values['count'])}"
    text = catalogue(_current).get(message_id)
    if text is None:
        text = catalogue(SOURCE_LANGUAGE).get(message_id, message_id)
    return text.format(**values) if values else text


def has_message(message_id: str) -> bool:
    return message_id in catalogue(SOURCE_LANGUAGE) or f"{message_id}.other" in catalogue(SOURCE_LANGUAGE)


def engine_text(text: Any) -> str:
    """Engine text in the current language: an `engine.messages.Message` by its id from the
    catalogue's `[engine]` table, filled with its values; English, or any other text, as it is."""
    message_id = getattr(text, "message_id", None)
    if message_id is None or _current == SOURCE_LANGUAGE:
        return "" if text is None else str(text)
    template = catalogue(_current).get(f"engine.{message_id}")
    if template is None:
        return str(text)
    try:
        # A value that is itself a Message ("training", "regularization") is shown translated too.
        return template.format(**{name: engine_text(value) if hasattr(value, "message_id") else value for name, value in text.values.items()})
    except (KeyError, IndexError, ValueError):  # a translation that does not fit: the English is right
        return str(text)


def counted(noun: str, count: int) -> str:
    """`count` things in the current language: counted("images", 1) = "1 image" (the `[count]` table)."""
    return t(f"count.{noun}", count=count)


def plural_form(count: int) -> str:
    """`one` or `other`: the form of a message with a count (`{ one = "1 image", other = "{count}
    images" }`). English and Japanese need no more forms; Japanese gives both the same text."""
    return "one" if count == 1 else "other"
