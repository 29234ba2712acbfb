"""The Parameters step offers each network type with its own settings, and the saved answers hold them."""

from __future__ import annotations

from pathlib import Path

import pytest
from wizard_support import anyio_backend, clear_and_type, make_app, settle, shown  # noqa: F401

from engine.config import load_answers

pytestmark = pytest.mark.anyio

# type -> the settings typed on the Parameters step (by their answers key), as the file must hold them
TYPED = {
    "lora": {"network.dora": True, "network.dropout": 0.1},
    "locon": {"network.conv_dim": 4, "network.conv_alpha": 2.0},
    "loha": {"network.conv_dim": 4, "network.rank_dropout": 0.05},
    # alpha emptied first: a full-matrix LoKr has none (the step refuses full_matrix beside an alpha)
    "lokr": {"network.alpha": None, "network.factor": 8, "network.full_matrix": True, "network.module_dropout": 0.1},
}
OTHER_TYPES_SETTINGS = {"network.conv_dim", "network.factor", "network.full_matrix", "network.dropout",
                        "network.rank_dropout", "network.module_dropout"}


def row(app, key: str):
    return app.screen.query_one("#row-field-" + key.replace(".", "-"))


def control(app, key: str):
    return app.screen.query_one("#field-" + key.replace(".", "-"))


@pytest.mark.parametrize("network_type", list(TYPED))
async def test_each_type_is_offered_with_its_settings_and_saved(network_type, demo, workspace, tmp_path_factory):
    app = make_app(tmp_path_factory.mktemp("data"), answers=load_answers(demo / "answers.toml"))
    app.draft.step = "parameters"
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        # A setting of another type first: choosing this type drops it rather than saving a refused file.
        if network_type != "lokr":
            control(app, "network.type").value = "lokr"
            await settle(pilot)
            control(app, "network.factor").focus()
            await clear_and_type(pilot, "4")
            await settle(pilot)
        control(app, "network.type").value = network_type
        await settle(pilot)
        for key in OTHER_TYPES_SETTINGS - set(TYPED[network_type]):
            assert not row(app, key).display or app.draft.get(key) is None, key
        for key, value in TYPED[network_type].items():
            assert row(app, key).display, f"{key} is not offered for {network_type}"
            if isinstance(value, bool):
                control(app, key).value = value
            else:
                control(app, key).focus()
                await clear_and_type(pilot, "" if value is None else str(value))
            await settle(pilot)
            assert not row(app, key).has_error, shown(app)
        await settle(pilot, 0.5)  # the size line is computed in a worker
        assert "File size (fp16):" in shown(app) and "other types:" in shown(app)
        await pilot.press("ctrl+n")
        await settle(pilot)
        assert app.screen.name == "review"
        await pilot.press("ctrl+s")
        await settle(pilot)

    saved = load_answers(Path(workspace) / "usu_bear.toml", check_paths=False).network
    assert saved.type == network_type
    written = {f"network.{key}" for key, value in saved.model_dump().items() if value not in (None, False)}
    for key, value in TYPED[network_type].items():
        assert getattr(saved, key.split(".")[1]) == value
    assert not (written & OTHER_TYPES_SETTINGS) - set(TYPED[network_type])
