"""The kohya folder convention, captions, kohya's step arithmetic and image decoding."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from engine.dataset import match_reg_counts, open_image, plan_dataset, resize_and_crop
from engine.errors import DatasetError
from engine.latents import image_tensor


def make_images(folder: Path, count: int, size=(32, 32), colour=(200, 10, 10)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"{i:02d}.png"
        Image.new("RGB", size, colour).save(path)
        paths.append(path)
    return paths


def test_folder_names_give_repeats_and_prompt(tmp_path):
    make_images(tmp_path / "train" / "20_usu bear", 3)
    plan = plan_dataset(tmp_path / "train")
    (concept,) = plan.concepts
    assert (concept.repeats, concept.prompt) == (20, "usu bear")
    assert {e.caption for e in plan.train_examples} == {"usu bear"}
    assert plan.num_train_items == 60


def test_caption_file_replaces_the_folder_prompt(tmp_path):
    paths = make_images(tmp_path / "train" / "5_usu bear", 2)
    paths[0].with_suffix(".txt").write_text("usu bear, sitting, red scarf\nsecond line ignored\n", encoding="utf-8")
    paths[1].with_suffix(".caption").write_text("ignored: wrong extension", encoding="utf-8")
    plan = plan_dataset(tmp_path / "train", caption_extension=".txt")
    assert [e.caption for e in plan.train_examples] == ["usu bear, sitting, red scarf", "usu bear"]
    assert plan.tag_frequency()["5_usu bear"] == {"usu bear": 2, "sitting": 1, "red scarf": 1}


def test_kohya_step_arithmetic_with_regularization(tmp_path):
    make_images(tmp_path / "train" / "10_usu bear", 4)
    make_images(tmp_path / "reg" / "1_bear", 25)
    plan = plan_dataset(tmp_path / "train", tmp_path / "reg")
    assert plan.num_train_items == 40
    assert plan.num_reg_items == 40  # 25 reg images, repeated to match the 40 training items
    assert plan.items_per_epoch == 80
    assert plan.batches_per_epoch(3) == 27
    assert plan.dataset_dirs() == {"10_usu bear": {"n_repeats": 10, "img_count": 4}}
    assert plan.dataset_dirs(reg=True) == {"1_bear": {"n_repeats": 1, "img_count": 25}}


def test_reg_images_are_cut_when_there_are_more_than_needed():
    from engine.dataset import Concept, Example

    reg = [Concept(Path("1_bear"), 1, "bear", tuple(Example(Path(f"{i}.png"), "bear", True) for i in range(100)), True)]
    counts = match_reg_counts(reg, 30)
    assert sum(counts) == 30 and max(counts) == 1


def test_reg_matching_follows_kohya_first_pass_with_repeats():
    from engine.dataset import Concept, Example

    reg = [Concept(Path("3_bear"), 3, "bear", tuple(Example(Path(f"{i}.png"), "bear", True) for i in range(2)), True)]
    # first pass adds 3 + 3, then one at a time until 8 are reached
    assert match_reg_counts(reg, 8) == [4, 4]


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({"usu bear": 2}, "not named <repeats>_<prompt>"),
        ({"0_usu bear": 2}, "has 0 repeats"),
        ({"10_usu bear": 0}, "holds no images"),
        ({}, "holds no <repeats>_<prompt> folders"),
    ],
)
def test_bad_layouts_name_the_folder(tmp_path, layout, message):
    root = tmp_path / "train"
    root.mkdir()
    for name, count in layout.items():
        (root / name).mkdir()
        make_images(root / name, count)
    with pytest.raises(DatasetError, match=message) as err:
        plan_dataset(root)
    assert str(root) in err.value.render()


def test_a_concept_folder_given_as_root_says_give_the_parent(tmp_path):
    make_images(tmp_path / "train" / "20_usu bear", 2)
    with pytest.raises(DatasetError, match="give the parent folder"):
        plan_dataset(tmp_path / "train" / "20_usu bear")


def test_empty_and_non_utf8_captions_are_errors(tmp_path):
    paths = make_images(tmp_path / "train" / "1_usu bear", 1)
    paths[0].with_suffix(".txt").write_text("  \n", encoding="utf-8")
    with pytest.raises(DatasetError, match="caption file is empty"):
        plan_dataset(tmp_path / "train")
    paths[0].with_suffix(".txt").write_bytes("くま".encode("shift_jis"))
    with pytest.raises(DatasetError, match="not UTF-8"):
        plan_dataset(tmp_path / "train")


def test_exif_rotation_is_applied(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    Image.new("RGB", (40, 20), (0, 0, 255)).save(path, exif=exif)
    assert open_image(path).size == (20, 40)


def test_transparency_is_flattened_onto_white(tmp_path):
    path = tmp_path / "alpha.png"
    Image.new("RGBA", (8, 8), (255, 0, 0, 0)).save(path)
    assert open_image(path).getpixel((0, 0)) == (255, 255, 255)


def test_resize_and_centre_crop():
    image = Image.new("RGB", (200, 100))
    image.paste((255, 0, 0), (0, 0, 50, 100))  # a red band on the left edge is cropped away
    cropped = resize_and_crop(image, 64, 64)
    assert cropped.size == (64, 64)
    assert cropped.getpixel((32, 32)) == (0, 0, 0)


def test_image_tensor_range_and_shape(tmp_path):
    (path,) = make_images(tmp_path, 1, size=(50, 70), colour=(255, 0, 128))
    tensor = image_tensor(path, (32, 32))
    assert tuple(tensor.shape) == (3, 32, 32)
    assert tensor.min() >= -1.0 and tensor.max() <= 1.0
    assert tensor[0, 0, 0].item() == pytest.approx(1.0)


def test_corrupt_image_is_a_dataset_error(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DatasetError, match="cannot be decoded") as err:
        open_image(path)
    assert "broken.png" in err.value.render()


def test_unicode_names(tmp_path):
    make_images(tmp_path / "train" / "10_usu くま", 1)
    plan = plan_dataset(tmp_path / "train")
    assert plan.concepts[0].prompt == "usu くま"
