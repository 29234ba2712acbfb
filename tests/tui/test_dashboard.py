"""The training dashboard fed a recorded event stream (tests/tui/dashboard_support.py): every
panel's content, the ETA arithmetic, the keys, the finish and failure screens.

"Running" is real: the test holds the run's engine lock (engine/run_folder.py RunLock), as an engine
does, so the dashboard follows the stream until the lock is let go.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from dashboard_support import (
    LORA_BYTES,
    FixedMonitor,
    at_step,
    events_after,
    events_until,
    recorded_events,
    recorded_run,
    write_events,
)
from wizard_support import anyio_backend, screen_text, shown, simulated_facts  # noqa: F401

from engine.run_folder import RunLock
from tui_lora.finish import copy_lora, finished_lora, lora_folder_in
from tui_lora.run_view import RunView, format_duration, smooth

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("english_locale")]


def dashboard_app(data: Path, run: Path, now: float, *, attach: bool = True):
    from tui_lora.app import WizardApp

    options = {"clock": lambda: now, "monitor": FixedMonitor()}
    return WizardApp(data_folder=data, facts_source=simulated_facts, attach=run if attach else None, dashboard_options=options)


async def wait_for(pilot, condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; the screen shows:\n{screen_text(pilot.app)}")
        await pilot.pause(0.05)
    await pilot.pause(0.1)  # the screen it waited for is drawn


def stream(*events: dict) -> RunView:
    view = RunView(Path("x.run"))
    for event in events:
        view.apply({"v": 1, **event})
    return view


def step(number: int, when: float, loss: float = 0.5, total: int = 100) -> dict:
    return {"time": when, "kind": "step", "step": number, "total_steps": total, "epoch": 1, "loss": loss, "lr": 1e-4}


# ---------------------------------------------------------------------------------- the arithmetic


def test_eta_is_the_remaining_steps_at_the_moving_average_speed():
    started = {"time": 90.0, "kind": "started", "total_steps": 200, "epochs": 2, "steps_per_epoch": 100}
    ready = {"time": 100.0, "kind": "ready", "device": "cuda:0", "precision": "bf16", "total_steps": 200}
    # Steps are reported in batches of 10 (log_every_steps), each batch written at one time.
    view = stream(started, ready, *(step(n, 110.0, total=200) for n in range(1, 11)), *(step(n, 120.0, total=200) for n in range(11, 21)))
    assert view.steps_per_second() == pytest.approx(20 / 20)  # from `ready` at 100 s to step 20 at 120 s
    assert view.eta_seconds(now=120.0) == pytest.approx(180.0)
    assert view.eta_seconds(now=125.0) == pytest.approx(175.0)  # counts down between reports
    assert view.eta_seconds(now=500.0) == 0.0
    assert view.elapsed_seconds(now=125.0) == pytest.approx(35.0)  # since `started`
    assert format_duration(view.eta_seconds(now=120.0)) == "3:00"

    # The moving average forgets old reports: ten more batches at 5 steps/s.
    for batch in range(10):
        t = 120.0 + 2.0 * (batch + 1)
        for n in range(21 + 10 * batch, 31 + 10 * batch):
            view.apply({"v": 1, **step(n, t, total=200)})
    assert view.step == 120 and view.steps_per_second() == pytest.approx(100 / 20)  # the last 10 batches only
    assert view.eta_seconds(now=140.0) == pytest.approx(80 / 5)


def test_eta_is_unknown_until_two_reports_and_after_the_end():
    started = {"time": 0.0, "kind": "started", "total_steps": 100, "epochs": 1, "steps_per_epoch": 100}
    view = stream(started)
    assert view.steps_per_second() is None and view.eta_seconds(10.0) is None
    assert format_duration(None) == "-"
    view = stream(started, {"time": 5.0, "kind": "ready"}, step(10, 15.0), {"time": 16.0, "kind": "finished", "lora": "a.safetensors", "steps": 10, "epochs": 1})
    assert view.eta_seconds(20.0) is None and view.state == "finished"
    assert view.elapsed_seconds(now=1000.0) == pytest.approx(16.0)  # a finished run's time stops


def test_smoothing_is_tensorboards_debiased_moving_average():
    assert smooth([1.0, 0.0], weight=0.6) == pytest.approx([1.0, 0.24 / 0.64])
    assert smooth([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])  # no pull towards zero


def test_a_resume_replaces_the_steps_after_its_checkpoint_and_adds_up_the_time():
    view = stream(
        {"time": 0.0, "kind": "started", "total_steps": 100, "epochs": 1, "steps_per_epoch": 100},
        {"time": 1.0, "kind": "ready"},
        *(step(n, 1.0 + n, loss=1.0) for n in range(1, 31)),
        {"time": 31.5, "kind": "checkpoint", "path": "c/step-20", "step": 20, "epoch": 0},
        # SIGKILL at step 30; resumed 100 s later
        {"time": 131.0, "kind": "started", "total_steps": 100, "epochs": 1, "steps_per_epoch": 100},
        {"time": 135.0, "kind": "resumed", "step": 20, "epoch": 0, "checkpoint": "c/step-20"},
        {"time": 136.0, "kind": "ready"},
        *(step(n, 136.0 + (n - 20), loss=0.5) for n in range(21, 26)),
    )
    assert [s for s, _ in view.losses] == list(range(1, 26))
    assert [loss for s, loss in view.losses if s > 20] == [0.5] * 5
    assert view.steps_per_second() == pytest.approx(1.0)  # this attempt's reports only
    assert view.elapsed_seconds(now=141.0) == pytest.approx(31.5 + 10.0)


def test_the_recorded_run_folds_into_the_view(tmp_path):
    events = recorded_events(tmp_path)
    view = stream(*events)
    assert view.state == "finished" and view.step == 240 and view.epochs == 6
    assert len(view.losses) == 240 and [s for s, _ in view.checkpoints] == [40, 80, 120, 160, 200]  # the last epoch ends in the LoRA
    assert view.samples.step == 240 and [p for _, p in view.samples.images] == ["usu bear sitting on a shelf", "usu bear at the beach"]
    assert view.lora_file == tmp_path / "output" / "usu_bear.safetensors"


# ---------------------------------------------------------------------------------- the dashboard


def checkpoint_at(step: int):
    return lambda event: event["kind"] == "checkpoint" and event["step"] == step


def expected_speed(events: list[dict]) -> float:
    """Steps/s over the last 11 report times (the view's window), computed here independently."""
    times: dict[float, int] = {}
    for event in events:
        if event["kind"] == "ready":
            times = {event["time"]: 0}
        elif event["kind"] == "step":
            times[event["time"]] = event["step"]
    reports = sorted(times.items())[-11:]
    return (reports[-1][1] - reports[0][1]) / (reports[-1][0] - reports[0][0])


async def test_every_panel_mid_run_then_the_finish_screen(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = recorded_run(tmp_path, until=checkpoint_at(120), lora=False)
    shown_events = events_until(tmp_path, checkpoint_at(120))
    now = shown_events[-1]["time"] + 30.0
    app = dashboard_app(tmp_path / "data", run, now)
    with RunLock(run):
        async with app.run_test(size=(120, 40)) as pilot:
            screen = app.screen
            await wait_for(pilot, lambda: screen.view.step == 120 and screen.query_one("#samples").previews, "step 120")
            await pilot.pause(0.6)  # one redraw after the last event
            text = shown(app)
            # Progress: step, epoch, speed from the moving average, elapsed and ETA from the clock.
            speed = expected_speed(shown_events)
            eta = max(0.0, 120 / speed - 30.0)
            elapsed = now - shown_events[0]["time"]
            assert "Step 120/240" in text and "Epoch 3/6" in text and "50%" in text and "training" in text
            assert f"Speed {speed:.2f} it/s" in text
            assert f"Elapsed {format_duration(elapsed)}" in text and f"ETA {format_duration(eta)}" in text
            # Loss: the title carries the learning rate; both series are plotted.
            assert "loss · lr 1.00e-03" in text and "raw" in text and "smoothed" in text
            assert len(screen.view.losses) == 120
            # GPU: the app's own reading of the machine.
            assert "NVIDIA H100 80GB HBM3" in text and "41.5/80.0 GiB" in text and "64°C" in text and "512/700 W" in text
            assert "CPU 23%" in text and "RAM 18.0/62.0 GiB" in text
            # Samples: the latest (step 80), with their prompts, as half-block art.
            assert "samples at step 80" in text and "usu bear sitting on a shelf" in text and "usu bear at the beach" in text
            assert "▀" in screen_text(app) or "▄" in screen_text(app)
            # Log: checkpoints, relative paths.
            assert "Checkpoints: 3, the last at step 120" in text
            assert "checkpoint: step-000000120" in text
            assert "step 120/240" in text  # the latest step line

            # The rest of the run arrives; the engine lets go of the lock: the finish screen.
            write_events(run, events_after(tmp_path, checkpoint_at(120)))
            (tmp_path / "output" / "usu_bear.safetensors").write_bytes(b"\0" * LORA_BYTES)
            await wait_for(pilot, lambda: screen.view.step == 240, "the last step")
            assert app.screen is screen  # the lock is still held: no ending yet
    app = dashboard_app(tmp_path / "data", run, now)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.screen.name == "finished", "the finish screen")
        text = shown(app)
        assert "Finished: usu_bear" in text
        assert "File: output/usu_bear.safetensors (275.8 KiB)" in text
        assert "<lora:usu_bear:1> usu bear" in text
        assert '"usu bear" is the instance prompt' in text and "plain class (bear)" in text
        assert "<lora:usu_bear:0.7>" in text
        assert "240 steps, 6 epochs" in text
        assert "lora-wizard train output/usu_bear.run/answers.toml" in text


async def test_the_finish_screen_follows_when_the_engine_lets_go(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = recorded_run(tmp_path, until=at_step(230))
    app = dashboard_app(tmp_path / "data", run, time.time())
    lock = RunLock(run).__enter__()
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: app.screen.view.step == 230, "step 230")
            write_events(run, events_after(tmp_path, at_step(230)))
            lock.__exit__(None, None, None)
            await wait_for(pilot, lambda: app.screen.name == "finished", "the finish screen")
            assert "<lora:usu_bear:1> usu bear" in shown(app)
    finally:
        lock.__exit__(None, None, None)


async def test_failure_screen_shows_the_error_its_remedy_and_the_resume_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = recorded_run(tmp_path, until=at_step(57), lora=False)
    write_events(run, [{"v": 1, "time": 1795625800.0, "kind": "failed", "message": "the loss became nan at step 57",
                        "remedy": "lower the learning rate; with fp16 try bf16", "resume": f"lora-wizard resume {run}"}])
    app = dashboard_app(tmp_path / "data", run, time.time())
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.screen.name == "failed", "the failure screen")
        text = shown(app)
        assert "Failed: usu_bear" in text and "At step 57 of 240" in text
        assert "the loss became nan at step 57" in text and "lower the learning rate; with fp16 try bf16" in text
        assert "Resume from the checkpoint at step 40 (r):" in text
        assert "lora-wizard resume output/usu_bear.run" in text
        await pilot.press("r")
        await pilot.pause()
    assert app.return_value == [["resume", str(run), "--detach"], ["attach", str(run)]]


async def test_a_run_whose_engine_vanished_says_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = recorded_run(tmp_path, until=at_step(130), lora=False)  # no lock, no last word: SIGKILL
    app = dashboard_app(tmp_path / "data", run, time.time())
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.screen.name == "failed", "the failure screen")
        text = shown(app)
        assert "Stopped unexpectedly: usu_bear" in text and "At step 130 of 240" in text
        assert "The engine stopped without a word." in text and "engine.log" in text
        assert "Resume from the checkpoint at step 120 (r):" in text


async def test_stopped_on_request_and_never_started(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = recorded_run(tmp_path, until=at_step(44), lora=False)
    write_events(run, [{"v": 1, "time": 1795625800.0, "kind": "interrupted", "step": 44, "reason": "stop requested", "resume": ""}])
    app = dashboard_app(tmp_path / "data", run, time.time())
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.screen.name == "failed", "the failure screen")
        assert "Stopped: usu_bear" in shown(app) and "Stopped on request (stop requested)" in shown(app)
    (run / "events.jsonl").write_text("", encoding="utf-8")
    app = dashboard_app(tmp_path / "data", run, time.time())
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.screen.name == "failed", "the failure screen")
        assert "Not started: usu_bear" in shown(app) and "engine.log" in shown(app)


async def test_keys_request_a_checkpoint_and_a_confirmed_stop_and_leaving_keeps_training(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = recorded_run(tmp_path, until=at_step(60), lora=False)
    app = dashboard_app(tmp_path / "data", run, time.time())
    with RunLock(run):
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: app.screen.view.step == 60, "step 60")
            await pilot.press("c")
            assert (run / "control" / "checkpoint").exists()
            await pilot.press("s")
            await pilot.pause()
            assert app.screen.__class__.__name__ == "ConfirmScreen" and "Stop training?" in shown(app)
            await pilot.press("n")
            await pilot.pause()
            assert not (run / "control" / "stop").exists()
            await pilot.press("s")
            await pilot.pause()
            await pilot.press("y")
            await pilot.pause()
            assert (run / "control" / "stop").exists()
            await pilot.press("q")
            await pilot.pause()
    assert app.return_value == []  # attached: leaving quits the app, training goes on
    assert app.farewell == f"Training goes on in the background. Follow it again with: lora-wizard attach {run}"


async def test_from_home_attach_opens_the_dashboard_and_leaving_returns_home(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = recorded_run(tmp_path, until=at_step(60), lora=False)
    app = dashboard_app(tmp_path / "data", run, time.time(), attach=False)
    app.remember_output_dir(tmp_path / "output")
    with RunLock(run):
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: "output/usu_bear.run" in shown(app), "the run on Home")
            await pilot.press("a")
            await wait_for(pilot, lambda: app.screen.name == "dashboard" and app.screen.view.step == 60, "the dashboard")
            await pilot.press("q")
            await wait_for(pilot, lambda: app.screen.name == "home", "Home")
            assert any("Training goes on in the background" in n.message for n in app._notifications)
    assert not (run / "control").exists()  # nothing was asked of the engine


async def test_copy_into_a_web_ui_asks_before_replacing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = recorded_run(tmp_path)
    webui = tmp_path / "stable-diffusion-webui"
    (webui / "models" / "Lora").mkdir(parents=True)
    app = dashboard_app(tmp_path / "data", run, time.time())
    async with app.run_test(size=(100, 40)) as pilot:
        await wait_for(pilot, lambda: app.screen.name == "finished", "the finish screen")
        await pilot.press("w")
        await pilot.press(*str(webui), "enter")
        copied = webui / "models" / "Lora" / "usu_bear.safetensors"
        await wait_for(pilot, lambda: copied.exists() and "Copied to" in shown(app), "the copy")
        assert copied.stat().st_size == LORA_BYTES
        copied.write_bytes(b"mine")
        await pilot.press("w", "enter")  # the same folder again (the copy gave the keys back to the screen)
        await wait_for(pilot, lambda: app.screen.__class__.__name__ == "ConfirmScreen", "the question")
        await pilot.press("n")
        await wait_for(pilot, lambda: "Kept the existing" in shown(app), "the answer")
        assert copied.read_bytes() == b"mine"
    assert app.settings.webui_dir == str(webui.resolve())


def test_web_ui_folders_and_the_finished_loras_facts(tmp_path):
    comfy = tmp_path / "ComfyUI"
    (comfy / "models" / "loras").mkdir(parents=True)
    assert lora_folder_in(comfy) == comfy / "models" / "loras"
    assert lora_folder_in(comfy / "models" / "loras") == comfy / "models" / "loras"
    run = recorded_run(tmp_path / "r")
    lora = tmp_path / "r" / "output" / "usu_bear.safetensors"
    facts = finished_lora(run, lora)
    assert facts.prompt == "<lora:usu_bear:1> usu bear" and facts.class_prompts == ("bear",) and facts.size == LORA_BYTES
    assert copy_lora(lora, comfy) == comfy / "models" / "loras" / "usu_bear.safetensors"
    with pytest.raises(FileExistsError):
        copy_lora(lora, comfy)
    from engine.errors import UserError

    with pytest.raises(UserError, match="does not exist"):
        copy_lora(lora, tmp_path / "nowhere")


async def test_the_end_of_the_run_closes_an_open_question(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = recorded_run(tmp_path, until=at_step(230))
    app = dashboard_app(tmp_path / "data", run, time.time())
    lock = RunLock(run).__enter__()
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: app.screen.name == "dashboard" and app.screen.view.step == 230, "step 230")
            await pilot.press("s")
            await wait_for(pilot, lambda: app.screen.__class__.__name__ == "ConfirmScreen", "the stop question")
            write_events(run, events_after(tmp_path, at_step(230)))
            lock.__exit__(None, None, None)
            await wait_for(pilot, lambda: app.screen.name == "finished", "the finish screen")
            assert [screen.__class__.__name__ for screen in app.screen_stack][1:] == ["FinishScreen"]  # above the default screen
            assert not (run / "control" / "stop").exists()
    finally:
        lock.__exit__(None, None, None)


async def test_after_a_copy_the_finish_screens_keys_work_at_once(tmp_path, monkeypatch):
    """Issue 20 item 6: after `w` and a copy, the footer shows the screen's keys again and h goes
    Home, without a Tab first; Esc in the copy field gives the keys back too."""
    monkeypatch.chdir(tmp_path)
    run = recorded_run(tmp_path)
    webui = tmp_path / "stable-diffusion-webui"
    (webui / "models" / "Lora").mkdir(parents=True)
    app = dashboard_app(tmp_path / "data", run, time.time())
    async with app.run_test(size=(100, 40)) as pilot:
        await wait_for(pilot, lambda: app.screen.name == "finished", "the finish screen")
        await pilot.press("w")
        assert app.focused.id == "webui"
        await pilot.press("escape")  # not a copy after all
        assert app.focused.id == "body" and app.screen.name == "finished"
        await pilot.press("w", *str(webui), "enter")
        await wait_for(pilot, lambda: "Copied to" in shown(app), "the copy")
        footer = shown(app).split("Copied to")[-1]
        assert "w Copy to web UI" in footer and "h Home" in footer
        await pilot.press("h")
        await wait_for(pilot, lambda: app.screen.name == "home", "Home")
        assert app.is_running


async def test_q_on_a_run_opened_from_home_goes_back_home(tmp_path, monkeypatch):
    """Issue 20 item 10: q leaves a run opened from Home for Home (the dashboard's q, and the
    finish screen's that follows it); attached from the command line, q quits as before."""
    monkeypatch.chdir(tmp_path)
    run = recorded_run(tmp_path)
    app = dashboard_app(tmp_path / "data", run, time.time(), attach=False)
    app.remember_output_dir(tmp_path / "output")
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: "output/usu_bear.run" in shown(app), "the run on Home")
        await pilot.press("a")
        await wait_for(pilot, lambda: app.screen.name == "finished", "the finish screen")
        await pilot.press("q")
        await wait_for(pilot, lambda: app.screen.name == "home", "Home")
        assert app.is_running
    app = dashboard_app(tmp_path / "data", run, time.time())
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.screen.name == "finished", "the finish screen")
        await pilot.press("q")
        await pilot.pause()
    assert app.return_value == []
