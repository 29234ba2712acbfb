"""The app's themes, read from the top-level `themes/` folder.

Each theme is `themes/<name>.toml` (a Textual `Theme`: its colours and variables) and optionally
`themes/<name>.tcss` (rules for that theme only, under `App:dark` or `App:light`); `wizard.tcss`
lays out every screen in terms of the theme's colours. The folder sits beside the `tui_lora`
package both in a source checkout and in an installed wheel (pyproject.toml ships it).
"""

from __future__ import annotations

import sys
from pathlib import Path

from textual.theme import Theme

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

THEMES_DIR = Path(__file__).resolve().parent.parent / "themes"
APP_STYLESHEET = "wizard.tcss"
DEFAULT_THEME = "lora-wizard-dark"


def theme_files() -> list[Path]:
    return sorted(THEMES_DIR.glob("*.toml"))


def load_theme(path: Path) -> Theme:
    """One theme definition; its short name (the file's stem) goes through the catalogue."""
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    data.setdefault("name", f"lora-wizard-{path.stem}")
    return Theme(**data)


def load_themes() -> dict[str, Theme]:
    """Theme name -> Theme, in file order (dark before light)."""
    themes = [load_theme(path) for path in theme_files()]
    return {theme.name: theme for theme in themes}


def short_name(theme_name: str) -> str:
    """`lora-wizard-dark` -> `dark`, the catalogue's `theme.dark`."""
    return theme_name.removeprefix("lora-wizard-")


def stylesheets() -> list[Path]:
    """The app stylesheet, then each theme's own rules."""
    own = [path.with_suffix(".tcss") for path in theme_files() if path.with_suffix(".tcss").is_file()]
    return [THEMES_DIR / APP_STYLESHEET, *own]
