"""Fixes worded for the wizard's fields.

The engine words its fixes for the answers file ("check the path in the answers file", "set
`[output] overwrite = true`"), which is right headless and wrong in the wizard, where the user
sees fields, not keys (and no field sets `overwrite`). An engine error or check item that names
the key it is about (`UserError.key`, `CheckItem.key`) gets the wizard's fix for that key from
the catalogue (`wizard_fix.<key>`); any other keeps the engine's.
"""

from __future__ import annotations

from typing import Any

from tui_lora.i18n import t


def wizard_fix(key: str | None, fix: str | None) -> str | None:
    """The wizard's fix for an answers-file key, else the engine's `fix`."""
    message_id = f"wizard_fix.{key}"
    if key and t(message_id) != message_id:
        return t(message_id)
    return fix


def wizard_error(error: Any) -> str:
    """A `UserError` as the wizard shows it: where, what, and the fix for the wizard's fields."""
    head = f"{error.where}: {error.message}" if error.where else error.message
    fix = wizard_fix(error.key, error.fix)
    return head + (f"\n  {t('common.fix')}: {fix}" if fix else "")
