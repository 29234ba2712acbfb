"""SVG snapshot of the Captions screen at 80x24 (dark theme): the review with three images, one
drawn in half blocks, its tags as chips and the tag table. Regenerate after a deliberate change
with `--snapshot-update`, then look at the SVG."""

from __future__ import annotations

from PIL import Image
from textual.widgets import Input
from wizard_support import make_app, settle

CAPTIONS = {"a": "usu, bear, smile, outdoors", "b": "usu, bear, sitting, outdoors, tree", "c": ""}


def dataset(workspace) -> None:
    folder = workspace / "train" / "10_usu bear"
    folder.mkdir(parents=True)
    for index, (stem, caption) in enumerate(CAPTIONS.items()):
        image = Image.radial_gradient("L").resize((96, 96)).convert("RGB")
        image.paste((200, 60 + 60 * index, 40), (24, 48, 72, 90))
        image.save(folder / f"{stem}.png")
        if caption:
            (folder / f"{stem}.txt").write_text(caption + "\n", encoding="utf-8")


async def open_captions(pilot) -> None:
    await settle(pilot)
    pilot.app.screen.query_one("#open-captions").press()
    await settle(pilot, 0.2)
    await pilot.press("tab")  # the chips of the first image
    for field in pilot.app.screen.query(Input):
        field.cursor_blink = False
    await settle(pilot)


def test_captions_screen(snap_compare, workspace, tmp_path):
    dataset(workspace)
    app = make_app(tmp_path / "data")
    app.draft.step = "dataset"
    app.draft.set("dataset.train_dir", "train")
    app.theme = "lora-wizard-dark"
    assert snap_compare(app, terminal_size=(80, 24), run_before=open_captions)
