"""The wizard driven by key presses only: every screen, from Home to a saved answers file that
`lora-wizard train` reads; Start; the draft kept across a restart."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from wizard_support import (  # noqa: F401
    Launches,
    anyio_backend,
    clear_and_type,
    demo_folder,
    make_app,
    screen_text,
    settle,
    shown,
    type_text,
)

from engine.config import Answers, answers_to_toml, load_answers
from engine.events import EventLog

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

pytestmark = pytest.mark.anyio


async def walk_to_review(pilot, demo: Path) -> None:
    """Home -> New LoRA -> every step, typing into the fields; stops on Review."""
    app = pilot.app
    await settle(pilot)
    assert app.screen.name == "home"
    await pilot.press("n")
    await settle(pilot)
    assert app.screen.name == "environment"
    assert "GTX 1660 SUPER" in shown(app)  # the simulated machine's check, loaded in a worker
    await pilot.press("ctrl+n")
    await settle(pilot)

    assert app.screen.name == "model"
    await type_text(pilot, str(demo / "model"))
    await settle(pilot, 0.4)
    assert "SD 1.x · diffusers folder · predicts epsilon" in shown(app)
    await pilot.press("ctrl+n")
    await settle(pilot)

    assert app.screen.name == "dataset"
    await pilot.press("tab")  # mode -> training root
    await type_text(pilot, str(demo / "train"))
    await pilot.press("tab", "tab")  # -> Browse -> regularization root
    await type_text(pilot, str(demo / "reg"))
    await settle(pilot, 0.5)
    assert "0 errors" in shown(app)
    await pilot.press("ctrl+n")
    await settle(pilot)

    assert app.screen.name == "parameters"
    assert app.focused.id == "field-training-batch_size"
    await pilot.press("tab")
    await clear_and_type(pilot, "3")  # epochs
    await pilot.press("tab")
    await type_text(pilot, "2")  # max steps
    await pilot.press("tab")
    await type_text(pilot, "64")  # resolution
    await pilot.press("tab", "tab", "tab")  # past the network type (lora) and DoRA (off)
    assert app.focused.id == "field-network-dim"
    await clear_and_type(pilot, "4")  # dim
    await pilot.press("tab")
    await type_text(pilot, "4")  # alpha
    for _ in range(20):  # Tab on, past the optimizer and output fields, to the samples
        await pilot.press("tab")
        if app.focused.id == "field-samples-prompts":
            break
    await type_text(pilot, "usu bear --s 20")
    await pilot.press("tab")
    await clear_and_type(pilot, "1")  # a sample every epoch
    await pilot.press("ctrl+n")
    await settle(pilot)
    assert app.screen.name == "review"


def expected_answers(demo: Path, workspace: Path) -> Answers:
    return Answers.model_validate(
        {
            "model": {"path": str(demo / "model")},
            "dataset": {"train_dir": str(demo / "train"), "reg_dir": str(demo / "reg"), "resolution": 64},
            "network": {"dim": 4, "alpha": 4},
            # batch size 1 and gradient checkpointing: the environment check's defaults for the simulated 6 GB card
            "training": {"epochs": 3, "max_steps": 2, "batch_size": 1, "gradient_checkpointing": True},
            "samples": {"prompts": ["usu bear --s 20"], "every_epochs": 1},
            "output": {"dir": "output", "name": "usu_bear"},  # in the answers file's folder: relative
        }
    )


async def test_walks_every_screen_by_keys_and_saves_the_expected_answers(demo, workspace, tmp_path_factory):
    app = make_app(tmp_path_factory.mktemp("data"))
    async with app.run_test(size=(80, 24)) as pilot:
        await walk_to_review(pilot, demo)
        text = shown(app)
        assert "2 steps" in text  # max_steps = 2: kohya's step arithmetic from engine.plan
        assert "Estimate:" in text and "VRAM" in text
        await pilot.press("ctrl+s")  # the default name, usu_bear.toml, in the working folder
        await settle(pilot)

    saved = workspace / "usu_bear.toml"
    assert saved.read_text(encoding="utf-8") == answers_to_toml(expected_answers(demo, workspace))
    # ... and the engine reads it back as the same run, the output folder beside the file.
    resolved = load_answers(saved)
    assert resolved.output.dir == workspace / "output"
    assert resolved.model_dump() == expected_answers(demo, workspace).resolve_paths(workspace).model_dump()


async def test_saving_never_replaces_a_file_without_confirmation(demo, workspace, tmp_path_factory):
    saved = workspace / "usu_bear.toml"
    saved.write_text("# mine\n", encoding="utf-8")
    app = make_app(tmp_path_factory.mktemp("data"), answers=load_answers(demo / "answers.toml"))
    app.draft.step = "review"
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("ctrl+s")
        await settle(pilot)
        assert type(app.screen).__name__ == "ConfirmScreen"
        await pilot.press("n")
        await settle(pilot)
        assert saved.read_text(encoding="utf-8") == "# mine\n"
        await pilot.press("ctrl+s")
        await settle(pilot)
        await pilot.press("y")
        await settle(pilot)
    assert tomllib.loads(saved.read_text(encoding="utf-8"))["output"]["name"] == "usu_bear"


async def test_start_creates_the_run_and_launches_the_engine(demo, workspace, tmp_path_factory):
    launches = Launches()
    answers = load_answers(demo / "answers.toml").model_copy(update={})
    app = make_app(tmp_path_factory.mktemp("data"), answers=answers, launch=launches)
    app.draft.set("output.dir", str(workspace / "output"))
    app.draft.step = "review"
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("ctrl+r")
        await settle(pilot, 0.2)
        run = workspace / "output" / "usu_bear.run"
        assert launches.folders == [run]
        # The dashboard follows the run; this launcher started no engine, so it says so.
        for _ in range(100):
            if app.screen.name == "failed":
                break
            await settle(pilot, 0.1)
        assert app.screen.name == "failed"
        text = shown(app)
        assert "Not started: usu_bear" in text and "lora-wizard resume output/usu_bear.run" in text
        frozen = load_answers(run / "answers.toml")
        assert frozen.model.path == demo / "model"
        # Starting the same output again is refused on the Review screen, with the engine's fix.
        await pilot.press("h")
        await settle(pilot)
        assert app.screen.name == "home"
        assert "output/usu_bear.run" in shown(app)  # the new run is listed (not started: no engine here)


async def test_draft_reopens_on_the_same_screen_with_the_same_answers(demo, workspace, tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    app = make_app(data, answers=load_answers(demo / "answers.toml"))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        for _ in range(3):
            await pilot.press("ctrl+n")
            await settle(pilot)
        assert app.screen.name == "parameters"
        await pilot.press("tab")
        await clear_and_type(pilot, "7")  # epochs
        await pilot.press("ctrl+q")
    reopened = make_app(data)
    async with reopened.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert reopened.screen.name == "parameters"
        assert reopened.screen.query_one("#field-training-epochs").value == "7"
        await pilot.press("escape")
        await settle(pilot)
        assert reopened.screen.name == "dataset"
        await pilot.press("escape", "escape", "escape")
        await settle(pilot)
        assert reopened.screen.name == "home"
        assert "Continue the draft (Dataset)" not in shown(reopened)  # the last step shown was Environment
        assert "Continue the draft (Environment)" in shown(reopened)


def write_run(output: Path, demo: Path, kind: str) -> Path:
    """A run folder as the engine leaves it after `kind` (its events written by the engine's log)."""
    from engine.run_folder import create_run_folder

    answers = load_answers(demo / "answers.toml").model_copy(deep=True)
    answers.output.dir = output
    folder = create_run_folder(answers)
    with EventLog(folder / "events.jsonl") as events:
        events.emit("started", run_dir=str(folder), pid=1, total_steps=10, epochs=1, steps_per_epoch=10, breakdown=[], settings={})
        events.emit("step", step=4, total_steps=10, epoch=1, loss=0.1, lr=1e-4)
        if kind == "finished":
            events.emit(kind, lora=str(output / "usu_bear.safetensors"), steps=10, epochs=1)
        else:
            events.emit(kind, step=4, reason="SIGINT", resume=f"lora-wizard resume {folder}")
    return folder


async def test_home_lists_runs_and_leaves_to_attach_or_resume(demo, workspace, tmp_path_factory):
    run = write_run(workspace / "output", demo, "interrupted")
    data = tmp_path_factory.mktemp("data")
    app = make_app(data)
    app.remember_output_dir(workspace / "output")
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        text = shown(app)
        assert "interrupted" in text and "4/10" in text and "output/usu_bear.run" in text
        await pilot.press("r")
        await settle(pilot)
    assert app.return_value == [["resume", str(run), "--detach"], ["attach", str(run)]]

    app = make_app(data)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("a")  # the dashboard, which shows how the run ended
        for _ in range(100):
            if app.screen.name == "failed":
                break
            await pilot.pause(0.1)
        await settle(pilot)  # the screen is there; its first paint follows
        assert "Stopped: usu_bear" in shown(app)

    app = make_app(data)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("o")  # its answers as a new LoRA
        await settle(pilot)
        assert app.screen.name == "environment"
        assert app.draft.get("dataset.train_dir") == str(demo / "train")


def test_what_home_leaves_for_runs_as_lora_wizard_commands(demo, workspace, capsys):
    """After the app exits, its follow-up runs in this terminal: here `attach` on a finished run."""
    from tui_lora.cli import run_follow_up

    run = write_run(workspace / "output", demo, "finished")
    assert run_follow_up([["attach", str(run)]]) == 0
    assert f"finished: {workspace / 'output' / 'usu_bear.safetensors'}" in capsys.readouterr().out
    assert run_follow_up([["attach", str(workspace / "nowhere")], ["attach", str(run)]]) == 2  # stops at the first failure
