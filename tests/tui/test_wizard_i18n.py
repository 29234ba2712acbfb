"""One message catalogue, complete in Japanese; the language from the locale or a setting; the
themes from the top-level themes/ folder, switchable and remembered."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from wizard_support import anyio_backend, make_app, settle, shown  # noqa: F401

from tui_lora.draft import STEPS
from tui_lora.fields import PARAMETER_FIELDS
from tui_lora.i18n import LANGUAGES, catalogue, choose_language, language_from_locale, set_language, t
from tui_lora.settings import load_settings
from tui_lora.themes import THEMES_DIR, load_themes, short_name, stylesheets

pytestmark = pytest.mark.anyio
PACKAGE = Path(__file__).resolve().parents[2] / "tui_lora"
# The app's own code: every string it shows goes through t(); the subcommands print English.
APP_SOURCES = [PACKAGE / "app.py", PACKAGE / "fields.py", *sorted((PACKAGE / "screens").glob("*.py")), *sorted((PACKAGE / "widgets").glob("*.py"))]
PLACEHOLDER = re.compile(r"{(\w*)}")


@pytest.fixture(autouse=True)
def english_afterwards():
    yield
    set_language("en")


def test_every_message_has_a_japanese_translation():
    english, japanese = catalogue("en"), catalogue("ja")
    missing = sorted(set(english) - set(japanese))
    assert not missing, f"messages without Japanese in tui_lora/locale/ja.toml: {missing}"
    # [engine] messages: their English is the engine's (test_engine_messages_have_japanese).
    assert not sorted(k for k in set(japanese) - set(english) if not k.startswith("engine.")), "ja.toml has messages en.toml does not"
    empty = [key for key, text in japanese.items() if not text.strip()]
    assert not empty, f"empty Japanese messages: {empty}"
    different = [key for key in english if set(PLACEHOLDER.findall(english[key])) != set(PLACEHOLDER.findall(japanese[key]))]
    assert not different, f"placeholders differ between en and ja: {different}"


def test_every_message_id_in_the_code_exists():
    used = set()
    for source in APP_SOURCES:
        used |= set(re.findall(r"""(?<![\w.])t\(\s*"([a-z0-9_.]+)"\s*[,)]""", source.read_text(encoding="utf-8")))
        used |= set(re.findall(r"""Binding\([^)]*"(key\.[a-z_]+)"\)""", source.read_text(encoding="utf-8")))
    assert len(used) > 100  # the scan finds the app's messages
    unknown = sorted(i for i in used - set(catalogue("en")) if f"{i}.other" not in catalogue("en"))  # or a counted one
    assert not unknown, f"message ids used in the code but missing from en.toml: {unknown}"


def test_composed_message_ids_exist():
    """Ids the code builds from data: steps, run states, fields, choices, themes."""
    from engine.run_folder import RunStatus  # noqa: F401  (the states below are run_status's)

    ids = [f"step.{step}" for step in STEPS]
    ids += [f"state.{state.replace(' ', '_')}" for state in ("running", "finished", "failed", "interrupted", "stopped unexpectedly", "not started")]
    ids += [f"field.{spec.key}.{part}" for spec in PARAMETER_FIELDS for part in ("label", "help")]
    ids += [f"theme.{short_name(name)}" for name in load_themes()]
    ids += [f"status.{status}" for status in ("ok", "warn", "fail")]
    english = catalogue("en")
    assert [i for i in ids if i not in english] == []


def test_language_comes_from_the_locale_or_the_setting():
    assert language_from_locale({"LANG": "ja_JP.UTF-8"}) == "ja"
    assert language_from_locale({"LC_ALL": "en_US.UTF-8", "LANG": "ja_JP.UTF-8"}) == "en"  # LC_ALL first
    assert language_from_locale({"LC_ALL": "", "LC_MESSAGES": "ja_JP", "LANG": "C"}) == "ja"
    assert language_from_locale({"LANG": "C.UTF-8"}) == "en"
    assert language_from_locale({}) == "en"
    assert choose_language("ja", {"LANG": "en_US.UTF-8"}) == "ja"
    assert choose_language("klingon", {"LANG": "ja_JP.UTF-8"}) == "ja"
    set_language("ja")
    assert t("nav.next") == "次へ"
    assert set(LANGUAGES) == {"en", "ja"}


async def test_japanese_from_the_locale_lays_out_in_80_columns(tmp_path, monkeypatch):
    monkeypatch.setenv("LANG", "ja_JP.UTF-8")
    monkeypatch.delenv("LC_ALL", raising=False)
    monkeypatch.delenv("LC_MESSAGES", raising=False)
    app = make_app(tmp_path)
    app.draft.step = "parameters"
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        text = shown(app)
        assert "1 環境 2 ベースモデル 3 データセット 4 パラメーター 5 確認" in text
        assert "バッチサイズ" in text and "esc 戻る" in text
        body = app.screen.query_one("#body")
        assert body.max_scroll_x == 0  # wide characters fit: nothing spills sideways


async def test_language_switch_from_the_command_palette_is_remembered(tmp_path, monkeypatch):
    monkeypatch.setenv("LANG", "en_US.UTF-8")
    monkeypatch.delenv("LC_ALL", raising=False)
    app = make_app(tmp_path)
    app.draft.step = "model"
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("ctrl+p")
        await settle(pilot)
        await pilot.press(*"日本語")
        await settle(pilot)
        await pilot.press("enter")
        await settle(pilot)
        assert app.screen.name == "model"
        assert "ベースモデル" in shown(app) and "esc 戻る" in shown(app)
    assert load_settings(tmp_path).language == "ja"


def test_themes_are_textual_themes_in_the_top_level_folder():
    assert THEMES_DIR.name == "themes" and THEMES_DIR.parent == PACKAGE.parent
    themes = load_themes()
    assert {"lora-wizard-dark", "lora-wizard-light"} <= set(themes)
    assert themes["lora-wizard-dark"].dark and not themes["lora-wizard-light"].dark
    assert [p.name for p in stylesheets()] == ["wizard.tcss", "dark.tcss", "light.tcss"]


async def test_theme_switches_by_key_and_palette_and_is_remembered(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert app.theme == "lora-wizard-dark"
        await pilot.press("ctrl+t")
        await settle(pilot)
        assert app.theme == "lora-wizard-light"
        assert app.current_theme.dark is False
    assert load_settings(tmp_path).theme == "lora-wizard-light"

    app = make_app(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert app.theme == "lora-wizard-light"  # remembered
        await pilot.press("ctrl+p")
        await pilot.press(*"Theme: Dark")
        await settle(pilot)
        await pilot.press("enter")
        await settle(pilot)
        assert app.theme == "lora-wizard-dark"
    assert load_settings(tmp_path).theme == "lora-wizard-dark"


@pytest.mark.slow
def test_a_wheel_install_finds_the_themes_and_catalogues(tmp_path):
    """Build the wheel from the sources (no network), install it into a folder and ask the
    installed package where its themes and messages are."""
    import shutil
    import subprocess

    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(PACKAGE.parent / name, source / name)
    for folder in ("engine", "tui_lora", "themes"):
        shutil.copytree(PACKAGE.parent / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(tmp_path / "dist"), str(source)], check=True, timeout=600)
    wheel = next((tmp_path / "dist").glob("*.whl"))
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "-q", "--target", str(tmp_path / "site"), str(wheel)], check=True, timeout=600)
    probe = (
        "import json, tui_lora.themes as th, tui_lora.i18n as i18n\n"
        "i18n.set_language('ja')\n"
        "print(json.dumps([str(th.THEMES_DIR), [str(p) for p in th.stylesheets()], sorted(th.load_themes()), i18n.t('nav.next')]))"
    )
    out = subprocess.run([sys.executable, "-c", probe], env={"PYTHONPATH": str(tmp_path / "site"), "PATH": ""}, cwd=tmp_path, capture_output=True, text=True, check=True)
    themes_dir, sheets, names, next_in_japanese = json.loads(out.stdout)
    assert themes_dir == str(tmp_path / "site" / "themes")
    assert all(Path(sheet).is_file() and sheet.startswith(themes_dir) for sheet in sheets) and len(sheets) == 3
    assert names == ["lora-wizard-dark", "lora-wizard-light"]
    assert next_in_japanese == "次へ"


ENGINE_MESSAGE = re.compile(r'Message\(\s*"([\w.]+)",\s*"((?:[^"\\]|\\.)*)"')


def engine_messages() -> dict[str, str]:
    """Every `engine.messages.Message` in the engine's sources: id -> English template."""
    found = {}
    for source in sorted((PACKAGE.parent / "engine").rglob("*.py")):
        found.update(ENGINE_MESSAGE.findall(source.read_text(encoding="utf-8")))
    return found


def test_engine_messages_have_japanese():
    english, japanese = engine_messages(), catalogue("ja")
    assert len(english) >= 10  # the scan finds them
    missing = sorted(i for i in english if f"engine.{i}" not in japanese)
    assert not missing, f"engine messages without Japanese in ja.toml [engine]: {missing}"
    unknown = sorted(k for k in japanese if k.startswith("engine.") and k.removeprefix("engine.") not in english)
    assert not unknown, f"ja.toml [engine] has ids the engine does not use: {unknown}"
    different = [i for i in english if set(PLACEHOLDER.findall(english[i])) != set(PLACEHOLDER.findall(japanese[f"engine.{i}"]))]
    assert not different, f"placeholders differ between the engine and ja.toml: {different}"


def test_engine_text_is_shown_in_the_language_and_stays_english_headless():
    from engine.messages import Message
    from tui_lora.i18n import engine_text

    small = Message("dataset.image.small", "{size} is smaller than the training resolution ({resolution} px): it is upscaled, which blurs it",
                    size="64x64", resolution=512)
    assert small == "64x64 is smaller than the training resolution (512 px): it is upscaled, which blurs it"
    assert json.loads(json.dumps({"message": small}))["message"] == str(small)  # headless: the English
    set_language("ja")
    try:
        assert engine_text(small) == "64x64 は学習解像度 (512 px) より小さいため拡大され、ぼやけます"
        assert engine_text("plain engine text") == "plain engine text"
    finally:
        set_language("en")
    assert engine_text(small) == str(small)


async def test_the_dataset_problems_are_in_japanese(demo, tmp_path, monkeypatch):
    monkeypatch.setenv("LANG", "ja_JP.UTF-8")
    monkeypatch.delenv("LC_ALL", raising=False)
    monkeypatch.delenv("LC_MESSAGES", raising=False)
    app = make_app(tmp_path / "data")
    app.draft.step = "dataset"
    app.draft.set("dataset.train_dir", str(demo / "train"))
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot, 0.3)
            rows = [str(w.render()) for w in app.screen.query("#problems StatusRow .status-text")]
            assert any("学習解像度 (512 px) より小さいため" in row for row in rows), rows
    finally:
        set_language("en")


async def test_the_environment_check_is_in_japanese(tmp_path, monkeypatch):
    from wizard_support import machine_with

    monkeypatch.setenv("LANG", "ja_JP.UTF-8")
    monkeypatch.delenv("LC_ALL", raising=False)
    monkeypatch.delenv("LC_MESSAGES", raising=False)
    app = make_app(tmp_path / "data", facts=machine_with())  # no GPU: training on the CPU
    app.draft.step = "environment"
    try:
        async with app.run_test(size=(80, 40)) as pilot:
            await settle(pilot, 0.3)
            rows = " ".join(str(w.render()) for w in app.screen.query("StatusRow .status-text"))
            assert "学習に使う GPU: GPU が見つかりません" in rows and "NVIDIA ドライバー: 見つかりません" in rows, rows
            # The CPU, memory and disk summaries, values filled in (a nested "swap" translated too).
            assert re.search(r"CPU: 物理コア \d+ 個", rows) and "ディスクの空き: " in rows and " の空き " in rows, rows
            assert re.search(r"メモリー: RAM \S+ GiB \(空き \S+ GiB\) \+ (スワップ|ページング ファイル) ", rows), rows
            assert "physical cores" not in rows and "free at" not in rows, rows
    finally:
        set_language("en")


async def test_the_dataset_walk_problems_are_in_japanese(tmp_path, monkeypatch):
    """A folder not named <repeats>_<prompt> and an image that does not decode: the Japanese
    Dataset screen words both problems and their fixes in Japanese (the values stay as they are)."""
    monkeypatch.setenv("LANG", "ja_JP.UTF-8")
    monkeypatch.delenv("LC_ALL", raising=False)
    monkeypatch.delenv("LC_MESSAGES", raising=False)
    train = tmp_path / "train"
    (train / "bear").mkdir(parents=True)
    (train / "bear" / "a.png").write_bytes(b"not a picture")
    (train / "20_usu bear").mkdir()
    (train / "20_usu bear" / "broken.png").write_bytes(b"not a picture either")
    app = make_app(tmp_path / "data")
    app.draft.step = "dataset"
    app.draft.set("dataset.train_dir", str(train))
    try:
        async with app.run_test(size=(100, 40)) as pilot:
            await settle(pilot, 0.5)
            rows = " ".join(str(w.render()) for w in app.screen.query("#problems StatusRow .status-text"))
            assert "フォルダー `bear` の名前が <repeats>_<prompt> の形ではありません" in rows, rows
            assert "`20_usu bear` のように名前を変えてください" in rows, rows
            assert "画像をデコードできません (" in rows and "画像を書き出し直すか、削除してください" in rows, rows
            assert "is not named" not in rows and "cannot be decoded" not in rows, rows
    finally:
        set_language("en")


def test_a_message_value_that_is_a_message_is_translated_too(tmp_path):
    from engine.checks.dataset import check_dataset
    from tui_lora.i18n import engine_text

    report = check_dataset(tmp_path / "missing", reg_dir=tmp_path / "reg_missing")
    messages = {p.path.name: p.message for p in report.problems}
    assert messages == {"missing": "the training folder does not exist", "reg_missing": "the regularization folder does not exist"}
    set_language("ja")
    try:
        assert engine_text(messages["missing"]) == "学習用フォルダーがありません"
        assert engine_text(messages["reg_missing"]) == "正則化用フォルダーがありません"
    finally:
        set_language("en")


async def test_the_model_notes_are_in_japanese(demo, tmp_path, monkeypatch):
    monkeypatch.setenv("LANG", "ja_JP.UTF-8")
    monkeypatch.delenv("LC_ALL", raising=False)
    monkeypatch.delenv("LC_MESSAGES", raising=False)
    app = make_app(tmp_path / "data")
    app.draft.step = "model"
    app.draft.set("model.path", str(demo / "model"))
    try:
        async with app.run_test(size=(100, 30)) as pilot:
            await settle(pilot, 0.5)
            text = shown(app)
            assert "予測 epsilon(scheduler/scheduler_config.json から)" in text, text
            assert "(モデル自身の tokenizer/ フォルダー)" in text, text
            assert "from scheduler" not in text and "own tokenizer" not in text, text
    finally:
        set_language("en")


async def test_the_review_run_items_are_in_japanese(demo, workspace, tmp_path, monkeypatch):
    from wizard_support import machine_with

    from engine.config import load_answers

    monkeypatch.setenv("LANG", "ja_JP.UTF-8")
    monkeypatch.delenv("LC_ALL", raising=False)
    monkeypatch.delenv("LC_MESSAGES", raising=False)
    app = make_app(tmp_path / "data", answers=load_answers(demo / "answers.toml"), facts=machine_with())  # no GPU
    app.draft.set("output.dir", str(workspace / "output"))
    app.draft.set("training.mixed_precision", "fp16")
    app.draft.step = "review"
    try:
        async with app.run_test(size=(100, 40)) as pilot:
            await settle(pilot, 0.5)
            rows = " ".join(str(w.render()) for w in app.screen.query("#run-items StatusRow .status-text"))
            assert "混合精度: fp16 には GPU が必要です" in rows, rows
            assert "fp16 needs a GPU" not in rows and "Mixed precision" not in rows, rows
            assert '[training] mixed_precision = "auto" にしてください' in shown(app), shown(app)
    finally:
        set_language("en")


async def test_the_gpu_line_is_in_japanese(tmp_path, monkeypatch):
    monkeypatch.setenv("LANG", "ja_JP.UTF-8")
    monkeypatch.delenv("LC_ALL", raising=False)
    monkeypatch.delenv("LC_MESSAGES", raising=False)
    app = make_app(tmp_path / "data")  # the simulated machine: one GTX 1660 SUPER
    app.draft.step = "environment"
    try:
        async with app.run_test(size=(100, 40)) as pilot:
            await settle(pilot, 0.3)
            rows = " ".join(str(w.render()) for w in app.screen.query("StatusRow .status-text"))
            assert re.search(r"GPU 0: NVIDIA GeForce GTX 1660 SUPER: VRAM \S+ GiB \(空き \S+ GiB\)、compute 7\.5、bf16 非対応", rows), rows
            assert "no bf16" not in rows and "VRAM, " not in rows, rows
            assert re.search(r"torch: \S+ \(CUDA \S+ 版\)", rows) and " build)" not in rows, rows
    finally:
        set_language("en")
