"""The app's settings: theme, language and the output folders used before (where Home looks for
runs). A small TOML file beside the draft; a setting that cannot be read is simply not set."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from engine.files import atomic_write_text
from tui_lora.draft import data_dir

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

SETTINGS_FILE = "settings.toml"
MAX_OUTPUT_DIRS = 20


@dataclass
class Settings:
    theme: str | None = None
    language: str | None = None  # None: from the locale
    output_dirs: list[str] = field(default_factory=list)  # newest first
    webui_dir: str | None = None  # where the last finished LoRA was copied (a web UI's folder)

    def remember_output_dir(self, folder: Path) -> bool:
        """Put `folder` first in the list; True when the list changed."""
        text = str(Path(folder).expanduser().resolve())
        if self.output_dirs[:1] == [text]:
            return False
        self.output_dirs = [text, *(d for d in self.output_dirs if d != text)][:MAX_OUTPUT_DIRS]
        return True


def settings_path(folder: Path | None = None) -> Path:
    return (folder or data_dir()) / SETTINGS_FILE


def load_settings(folder: Path | None = None) -> Settings:
    try:
        data = tomllib.loads(settings_path(folder).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return Settings()
    theme, language, dirs, webui = data.get("theme"), data.get("language"), data.get("output_dirs", []), data.get("webui_dir")
    return Settings(
        theme=theme if isinstance(theme, str) else None,
        language=language if isinstance(language, str) else None,
        output_dirs=[d for d in dirs if isinstance(d, str)] if isinstance(dirs, list) else [],
        webui_dir=webui if isinstance(webui, str) else None,
    )


def save_settings(settings: Settings, folder: Path | None = None) -> Path:
    import tomli_w

    data = {"theme": settings.theme, "language": settings.language, "output_dirs": settings.output_dirs,
            "webui_dir": settings.webui_dir}
    path = settings_path(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, tomli_w.dumps({k: v for k, v in data.items() if v is not None}))
    return path
