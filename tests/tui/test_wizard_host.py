"""Screens and widgets reach the wizard app through a typed host (tui_lora/host.py, issue 16):
`self.wizard` for the wizard's own state and steps, declared with their types in WizardHost;
`self.app` only for what Textual's App offers. A new call on an untyped app fails here."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from textual.app import App

import tui_lora
from tui_lora.host import WizardHost

PACKAGE = Path(tui_lora.__file__).parent
SOURCES = sorted([*(PACKAGE / "screens").glob("*.py"), *(PACKAGE / "widgets").glob("*.py")])


def uses_of(holder: str) -> list[tuple[str, int, str]]:
    """(file, line, name) of every `self.<holder>.<name>` (and `self.screen.<holder>.<name>`)."""
    found = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == holder:
                owner = node.value.value
                if isinstance(owner, ast.Name) and owner.id == "self" or isinstance(owner, ast.Attribute) and owner.attr == "screen":
                    found.append((path.name, node.lineno, node.attr))
    return found


def declared() -> set[str]:
    return {name for name in dir(WizardHost) if not name.startswith("_")} | set(WizardHost.__annotations__)


def test_screens_ask_textual_only_of_self_app():
    textual = set(dir(App))
    untyped = [use for use in uses_of("app") if use[2] not in textual]
    assert not untyped, f"the wizard's own calls go through self.wizard (tui_lora/host.py): {untyped}"


def test_what_screens_ask_of_the_wizard_is_declared():
    assert uses_of("wizard"), "the screens reach the app through self.wizard"
    undeclared = [use for use in uses_of("wizard") if use[2] not in declared()]
    assert not undeclared, f"declare these in tui_lora/host.py WizardHost: {undeclared}"


def test_the_app_is_a_wizard_host_with_the_same_signatures(tmp_path):
    from wizard_support import make_app

    app = make_app(tmp_path)
    assert isinstance(app, WizardHost)
    for name in declared():
        wanted = getattr(WizardHost, name, None)
        if inspect.isfunction(wanted):
            parameters = list(inspect.signature(wanted).parameters)[1:]  # without self
            assert list(inspect.signature(getattr(app, name)).parameters) == parameters, name
