"""Engine text that a UI can show in another language.

The engine writes English: the command line prints it, the JSON documents carry it, and search
engines know it. `Message` is that English text (a `str`, so every use of it stays as it is)
carrying its message id and the values filled in, so the wizard can look the id up in its own
catalogues (tui_lora/locale/*.toml, `[engine]` table) and fill in the same values:

    Message("dataset.image.small", "{size} is smaller than the training resolution ({resolution} px)", size="64x64", resolution=512)

Text built from a Message (concatenated, formatted into another string) is plain English again:
the UI then shows it as it is.
"""

from __future__ import annotations

from typing import Any


class Message(str):
    message_id: str
    values: dict[str, Any]

    def __new__(cls, message_id: str, template: str, **values: Any) -> Message:
        text = super().__new__(cls, template.format(**values))
        text.message_id = message_id
        text.values = values
        return text

    def __reduce__(self):  # pickles (threads, processes) as text with its id and values
        return (_rebuild, (self.message_id, str(self), self.values))


def _rebuild(message_id: str, text: str, values: dict[str, Any]) -> Message:
    rebuilt = str.__new__(Message, text)
    rebuilt.message_id, rebuilt.values = message_id, values
    return rebuilt
