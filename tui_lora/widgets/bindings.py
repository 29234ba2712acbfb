"""Key bindings whose descriptions are message ids, shown in the current language.

Textual reads a binding's description from the class's BINDINGS, fixed when the class is made;
the language is chosen later. Widgets declare `Binding("escape", "back", "key.back")` and call
`translate_bindings(self)` in `__init__`: the node's own copy of its bindings then carries the
translated text (the class keeps the ids, so a language switch can translate again).
"""

from __future__ import annotations

from dataclasses import replace

from textual.binding import BindingsMap
from textual.dom import DOMNode

from tui_lora.i18n import t

MESSAGE_PREFIX = "key."


def translate_bindings(node: DOMNode) -> None:
    source = type(node)._merged_bindings
    if source is None:
        return
    translated = BindingsMap()
    for key, bindings in source.key_to_bindings.items():
        translated.key_to_bindings[key] = [
            replace(b, description=t(b.description)) if b.description.startswith(MESSAGE_PREFIX) else b for b in bindings
        ]
    node._bindings = translated
