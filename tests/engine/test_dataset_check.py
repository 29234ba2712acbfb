"""Dataset pre-flight: a corpus of bad datasets, one per problem, each giving its own message on
its own file and nothing else; what the check calls an error is what training refuses."""

from __future__ import annotations

import builtins
import itertools
import os
import pathlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from engine.checks.dataset import check_dataset
from engine.checks.tokens import judge_token, suggest_tokens
from engine.dataset import open_image, plan_dataset
from engine.errors import DatasetError

RESOLUTION = 64
_colours = itertools.count(1)


def make_images(folder: Path, count: int, size: tuple[int, int] = (RESOLUTION, RESOLUTION), *, names: str = "img{:04d}.png") -> list[Path]:
    """`count` PNGs, each a colour of its own (so no two are duplicates)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for _ in range(count):
        n = next(_colours)
        path = folder / names.format(n)
        Image.new("RGB", size, (n % 256, (n // 256) % 256, 77)).save(path)
        paths.append(path)
    return paths


def good_train(root: Path, folder: str = "20_usu bear", count: int = 20) -> Path:
    """A training root that passes: 20 different images at the training resolution."""
    make_images(root / "train" / folder, count)
    return root / "train"


def deny_reading(monkeypatch: pytest.MonkeyPatch, target: Path) -> None:
    """Reading `target` fails with EACCES, as after `chmod 000` (tests run as root, where chmod
    does not stop reads). Pillow opens files with builtins.open, pathlib with Path.open."""
    real_open, real_path_open = builtins.open, pathlib.Path.open

    def denied(file) -> PermissionError:
        return PermissionError(13, "Permission denied", str(file))

    def guarded_open(file, *args, **kwargs):
        if isinstance(file, str | os.PathLike) and Path(file) == target:
            raise denied(file)
        return real_open(file, *args, **kwargs)

    def guarded_path_open(self, *args, **kwargs):
        if self == target:
            raise denied(self)
        return real_path_open(self, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(pathlib.Path, "open", guarded_path_open)


def training_accepts(train_dir: Path, reg_dir: Path | None = None, caption_extension: str = ".txt", **_) -> bool:
    """What training does before its first step: plan the folders, decode every image."""
    try:
        plan = plan_dataset(train_dir, reg_dir, caption_extension=caption_extension)
        for example in (*plan.train_examples, *plan.reg_examples):
            open_image(example.path)
    except DatasetError:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# The corpus: each builder writes a dataset with exactly one problem and returns check_dataset's
# arguments. `file` is the path the problem must name, relative to the case's folder.


@dataclass(frozen=True)
class Case:
    id: str
    severity: str
    code: str
    file: str
    says: str  # in the message or the fix
    build: Callable[[Path, pytest.MonkeyPatch], dict]
    needs_tokenizer: bool = False


def _misnamed(name: str) -> Callable[[Path, pytest.MonkeyPatch], dict]:
    def build(root: Path, _monkeypatch) -> dict:
        train = good_train(root)
        make_images(train / name, 20)
        return {"train_dir": train}

    return build


def _empty_root(root: Path, _monkeypatch) -> dict:
    (root / "train").mkdir()
    return {"train_dir": root / "train"}


def _flat_root(root: Path, _monkeypatch) -> dict:
    make_images(root / "train", 20)
    return {"train_dir": root / "train"}


def _child_folder(root: Path, _monkeypatch) -> dict:
    return {"train_dir": good_train(root) / "20_usu bear"}


def _no_images(root: Path, _monkeypatch) -> dict:
    train = good_train(root)
    (train / "5_shs dog").mkdir()
    return {"train_dir": train}


def _with_file(name: str, content: Callable[[Path], None]) -> Callable[[Path, pytest.MonkeyPatch], dict]:
    """A good dataset plus one file written into its concept folder."""

    def build(root: Path, _monkeypatch) -> dict:
        train = good_train(root)
        content(train / "20_usu bear" / name)
        return {"train_dir": train}

    return build


def _truncated_png(path: Path) -> None:
    Image.frombytes("RGB", (RESOLUTION, RESOLUTION), os.urandom(RESOLUTION * RESOLUTION * 3)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _image(size: tuple[int, int]) -> Callable[[Path], None]:
    return lambda path: Image.new("RGB", size, (1, 2, 3)).save(path)


def _text(text: str, encoding: str = "utf-8") -> Callable[[Path], None]:
    return lambda path: path.write_bytes(text.encode(encoding))


def _bomb(root: Path, monkeypatch) -> dict:
    # Pillow refuses images over 2x MAX_IMAGE_PIXELS; lowered so a small file stands in for a huge one.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", RESOLUTION * RESOLUTION * 3)
    train = good_train(root)
    Image.new("RGB", (200, 200)).save(train / "20_usu bear" / "huge.png")
    return {"train_dir": train}


def _caption_next_to_first_image(text: str | bytes, extension: str = ".txt") -> Callable[[Path, pytest.MonkeyPatch], dict]:
    def build(root: Path, _monkeypatch) -> dict:
        train = good_train(root)
        first = sorted((train / "20_usu bear").iterdir())[0]
        caption = first.with_name("first" + extension)
        first.rename(first.with_name("first.png"))
        caption.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
        return {"train_dir": train}

    return build


def _unreadable_image(root: Path, monkeypatch) -> dict:
    train = good_train(root)
    (target,) = make_images(train / "20_usu bear", 1, names="locked{:04d}.png")
    target.rename(train / "20_usu bear" / "locked.png")
    deny_reading(monkeypatch, train / "20_usu bear" / "locked.png")
    return {"train_dir": train}


def _unreadable_caption(root: Path, monkeypatch) -> dict:
    kwargs = _caption_next_to_first_image("usu bear")(root, monkeypatch)
    deny_reading(monkeypatch, kwargs["train_dir"] / "20_usu bear" / "first.txt")
    return kwargs


def _duplicate(root: Path, _monkeypatch) -> dict:
    train = good_train(root)
    original = sorted((train / "20_usu bear").iterdir())[0]
    original.rename(original.with_name("original.png"))
    # Another format and file, the same pixels: found by the decoded pixels, not the bytes.
    Image.open(original.with_name("original.png")).save(train / "20_usu bear" / "copy.bmp")
    return {"train_dir": train}


def _broken_link(root: Path, _monkeypatch) -> dict:
    train = good_train(root)
    (train / "20_usu bear" / "gone.png").symlink_to(root / "nowhere.png")
    return {"train_dir": train}


def _loose_image(root: Path, _monkeypatch) -> dict:
    train = good_train(root)
    (image,) = make_images(train, 1)
    image.rename(train / "loose.png")
    return {"train_dir": train}


def _subfolder(root: Path, _monkeypatch) -> dict:
    train = good_train(root)
    make_images(train / "20_usu bear" / "more", 1)
    return {"train_dir": train}


def _reg(folder: str, count: int) -> Callable[[Path, pytest.MonkeyPatch], dict]:
    def build(root: Path, _monkeypatch) -> dict:
        train = good_train(root)
        make_images(root / "reg" / folder, count)
        return {"train_dir": train, "reg_dir": root / "reg"}

    return build


def _token(folder: str) -> Callable[[Path, pytest.MonkeyPatch], dict]:
    return lambda root, _monkeypatch: {"train_dir": good_train(root, folder)}


CASES = [
    # errors: training refuses these
    Case("folder-not-named", "error", "folder.name", "train/usu dog", "20_usu bear", _misnamed("usu dog")),
    Case("folder-without-prompt", "error", "folder.name", "train/20_", "no prompt", _misnamed("20_")),
    Case("repeats-not-a-number", "error", "folder.repeats", "train/ab_usu dog", "`ab` is not a number", _misnamed("ab_usu dog")),
    Case("repeats-zero", "error", "folder.repeats", "train/0_usu dog", "0 repeats", _misnamed("0_usu dog")),
    Case("root-without-concepts", "error", "root.empty", "train", "no <repeats>_<prompt> folders", _empty_root),
    Case("root-of-loose-images", "error", "root.empty", "train", "dataset prepare", _flat_root),
    Case("child-folder-given", "error", "root.is_concept", "train/20_usu bear", "give the parent folder", _child_folder),
    Case("concept-without-images", "error", "folder.no_images", "train/5_shs dog", "holds no images", _no_images),
    Case("corrupt-image", "error", "image.decode", "train/20_usu bear/bad.png", "cannot be decoded", _with_file("bad.png", _text("\x89PNG\r\n\x1a\n garbage"))),
    Case("truncated-image", "error", "image.decode", "train/20_usu bear/cut.png", "cannot be decoded", _with_file("cut.png", _truncated_png)),
    Case("zero-byte-image", "error", "image.decode", "train/20_usu bear/empty.jpg", "cannot be decoded", _with_file("empty.jpg", _text(""))),
    Case("not-an-image", "error", "image.decode", "train/20_usu bear/notes.webp", "cannot be decoded", _with_file("notes.webp", _text("hello"))),
    Case("decompression-bomb", "error", "image.decode", "train/20_usu bear/huge.png", "decompression bomb", _bomb),
    Case("unreadable-image", "error", "image.decode", "train/20_usu bear/locked.png", "Permission denied", _unreadable_image),
    Case("empty-caption", "error", "caption.invalid", "train/20_usu bear/first.txt", "caption file is empty", _caption_next_to_first_image(" \n")),
    Case("caption-not-utf8", "error", "caption.invalid", "train/20_usu bear/first.txt", "not UTF-8", _caption_next_to_first_image("usu くま".encode("shift_jis"))),
    Case("unreadable-caption", "error", "caption.invalid", "train/20_usu bear/first.txt", "Permission denied", _unreadable_caption),
    # warnings: training runs, probably not as meant
    Case("few-images", "warning", "concept.few_images", "train/20_usu bear", "only 12 images", lambda root, _m: {"train_dir": good_train(root, count=12)}),
    Case("small-image", "warning", "image.small", "train/20_usu bear/small.png", "48x64 is smaller than the training resolution", _with_file("small.png", _image((48, 64)))),
    Case("extreme-aspect", "warning", "image.aspect", "train/20_usu bear/strip.png", "4.0:1", _with_file("strip.png", _image((256, 64)))),
    Case("duplicate", "warning", "image.duplicate", "train/20_usu bear/original.png", "copy.bmp", _duplicate),
    Case("caption-without-image", "warning", "caption.orphan", "train/20_usu bear/lonely.txt", "without an image", _with_file("lonely.txt", _text("usu bear"))),
    Case("caption-other-extension", "warning", "caption.other_extension", "train/20_usu bear/first.caption", "caption_extension", _caption_next_to_first_image("usu bear", ".caption")),
    Case("caption-without-token", "warning", "caption.no_token", "train/20_usu bear/first.txt", "instance token `usu`", _caption_next_to_first_image("a brown bear, sitting")),
    Case("other-file", "warning", "file.ignored", "train/20_usu bear/notes.md", "not an image or a caption", _with_file("notes.md", _text("# notes"))),
    Case("unsupported-image", "warning", "file.ignored", "train/20_usu bear/anim.gif", "convert it to PNG", _with_file("anim.gif", _image((64, 64)))),
    Case("broken-link", "warning", "link.broken", "train/20_usu bear/gone.png", "broken link", _broken_link),
    Case("loose-image-in-root", "warning", "root.loose_image", "train/loose.png", "ignored", _loose_image),
    Case("subfolder-in-concept", "warning", "file.ignored", "train/20_usu bear/more", "subfolder", _subfolder),
    Case("reg-class-differs", "warning", "reg.class", "reg/1_dog", "`dog` is not a training class", _reg("1_dog", 20)),
    Case("few-reg-images", "warning", "reg.few_images", "reg", "about 5x the training images (100)", _reg("1_bear", 5)),
    Case("token-in-pieces", "warning", "token.pieces", "train/20_zzqx bear", "into 4 pieces", _token("20_zzqx bear"), needs_tokenizer=True),
    Case("token-common-word", "warning", "token.common", "train/20_dog bear", "frequent token", _token("20_dog bear"), needs_tokenizer=True),
]

# A CLIP BPE vocabulary ordered like the real one: everyday words merged first, rare ones last.
COMMON_WORDS = ["a", "photo", "of", "the", "dog", "bear", "cat", "person", "toy", "in", "on", "with", "and", "red", "blue",
                "green", "white", "black", "background", "picture", "style", "sitting", "brown"]
RARE_WORDS = ["usu", "shs", "sts", "scs", "cpc", "coc", "cic", "msm", "nen", "ici", "lvl"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import CLIPTokenizer

    from engine.tiny import write_tiny_tokenizer

    folder = write_tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"), words=COMMON_WORDS + RARE_WORDS)
    return CLIPTokenizer.from_pretrained(folder)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_each_bad_dataset_gives_its_own_problem_on_its_file(case: Case, tmp_path, monkeypatch, request):
    kwargs = case.build(tmp_path, monkeypatch)
    if case.needs_tokenizer:
        kwargs["tokenizer"] = request.getfixturevalue("tokenizer")
    report = check_dataset(**kwargs, resolution=RESOLUTION)

    assert {p.code for p in report.problems} == {case.code}, [p.render() for p in report.problems]
    named = [p for p in report.problems if p.path == tmp_path / case.file]
    assert named, f"no problem names {case.file}: {[p.render() for p in report.problems]}"
    assert all(p.severity == case.severity for p in report.problems)
    assert any(case.says in p.message + " " + p.fix for p in named), [p.render() for p in named]
    assert report.exit_code == (2 if case.severity == "error" else 0)
    # The check's errors are exactly what training refuses before its first step.
    assert training_accepts(**kwargs) == (case.severity == "warning")


def test_a_good_dataset_has_no_problem_and_the_rows_give_kohyas_arithmetic(tmp_path, tokenizer):
    train = good_train(tmp_path)
    images = sorted((train / "20_usu bear").iterdir())
    for image in images[:2]:
        image.with_suffix(".txt").write_text("usu bear, sitting\n", encoding="utf-8")
    make_images(tmp_path / "reg" / "1_bear", 30)

    report = check_dataset(train, tmp_path / "reg", resolution=RESOLUTION, tokenizer=tokenizer, batch_size=4)

    assert report.problems == () and report.status == "ok" and report.exit_code == 0
    concept, reg = report.concepts
    assert (concept.repeats, concept.instance_token, concept.class_word) == (20, "usu", "bear")
    assert (concept.images, concept.captions, concept.size_range) == (20, 2, ((64, 64), (64, 64)))
    assert (concept.items_per_epoch, concept.steps_per_epoch) == (400, 100)
    assert (reg.is_reg, reg.class_word, reg.images, reg.items_per_epoch) == (True, "bear", 30, 400)
    plan = plan_dataset(train, tmp_path / "reg")
    assert report.train_items_per_epoch + report.reg_items_per_epoch == plan.items_per_epoch == 800
    assert report.steps_per_epoch == plan.batches_per_epoch(4) == 200
    assert report.tokenizer_checked and report.images_decoded == 50


def test_every_image_is_decoded_exactly_once(tmp_path, monkeypatch):
    train = good_train(tmp_path, count=6)
    concept = train / "20_usu bear"
    Image.new("RGB", (32, 160), (9, 9, 9)).save(concept / "small-and-thin.png")
    Image.new("RGB", (32, 160), (9, 9, 9)).save(concept / "same-pixels.jpg", quality=100, subsampling=0)
    (concept / "small-and-thin.txt").write_text("usu bear", encoding="utf-8")
    make_images(tmp_path / "reg" / "1_bear", 4)
    image_files = [p for p in [*concept.iterdir(), *(tmp_path / "reg" / "1_bear").iterdir()] if p.suffix != ".txt"]

    opened: Counter[Path] = Counter()
    real_open = Image.open

    def counting_open(fp, *args, **kwargs):
        opened[Path(fp)] += 1
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", counting_open)
    report = check_dataset(train, tmp_path / "reg", resolution=RESOLUTION)

    assert opened == Counter(dict.fromkeys(image_files, 1))
    assert report.images_decoded == len(image_files)
    # ... and that one decode fed every image check.
    codes = Counter(p.code for p in report.problems)
    assert codes["image.small"] == 2 and codes["image.aspect"] == 2
    assert {p.code for p in report.problems if p.path.name == "same-pixels.jpg"} >= {"image.small"}


def test_duplicates_are_the_same_pixels_not_the_same_bytes(tmp_path):
    train = good_train(tmp_path)
    concept = train / "20_usu bear"
    Image.new("RGB", (64, 64), (250, 0, 0)).save(concept / "red.png")
    Image.new("RGB", (64, 64), (250, 0, 0)).save(concept / "red.bmp")
    Image.new("RGB", (64, 64), (251, 0, 0)).save(concept / "almost-red.png")
    duplicates = [p for p in check_dataset(train, resolution=RESOLUTION).problems if p.code == "image.duplicate"]
    assert [(p.path.name, "red.bmp" in p.message) for p in duplicates] == [("red.png", True)]


def test_japanese_names_check_clean_and_train(tmp_path):
    concept = tmp_path / "train" / "10_usu くま"
    images = make_images(concept, 20, names="画像{}.png")
    first = images[0].rename(concept / "画像1.png")  # the issue's `train/10_usu くま/画像1.png`
    first.with_suffix(".txt").write_text("usu くま, 座っている", encoding="utf-8")
    make_images(tmp_path / "reg" / "1_くま", 20, names="正則化{}.png")

    report = check_dataset(tmp_path / "train", tmp_path / "reg", resolution=RESOLUTION)

    assert report.problems == ()
    row = report.concepts[0]
    assert (row.folder.name, row.instance_token, row.class_word, row.captions) == ("10_usu くま", "usu", "くま", 1)
    assert training_accepts(tmp_path / "train", tmp_path / "reg")


def test_spaces_and_symlinks_work(tmp_path):
    elsewhere = tmp_path / "my pictures" / "20_usu teddy bear"
    make_images(elsewhere, 19)
    (outside,) = make_images(tmp_path / "other photos", 1)
    (elsewhere / "linked photo.png").symlink_to(outside)
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "20_usu teddy bear").symlink_to(elsewhere, target_is_directory=True)

    report = check_dataset(tmp_path / "train", resolution=RESOLUTION)

    assert report.problems == ()
    (row,) = report.concepts
    assert (row.images, row.instance_token, row.class_word) == (20, "usu", "teddy bear")
    assert training_accepts(tmp_path / "train")


def test_a_single_word_folder_is_token_without_class_and_says_so(tmp_path):
    report = check_dataset(good_train(tmp_path, "20_usu"), resolution=RESOLUTION)
    (row,) = report.concepts
    assert (row.instance_token, row.class_word) == ("usu", None)
    assert any("first word" in note or "instance token" in note for note in row.notes)
    assert report.problems == ()


def test_every_problem_of_a_messy_dataset_is_reported_at_once(tmp_path):
    train = good_train(tmp_path)
    make_images(train / "usu dog", 2)
    (train / "20_usu bear" / "bad.png").write_bytes(b"not an image")
    (train / "20_usu bear" / "img9999.txt").write_text("", encoding="utf-8")
    report = check_dataset(train, tmp_path / "missing-reg", resolution=RESOLUTION)
    assert {p.code for p in report.errors} == {"folder.name", "image.decode", "root.missing"}
    assert {p.code for p in report.warnings} == {"caption.orphan"}
    assert report.problems[: len(report.errors)] == tuple(report.errors)  # errors first


def test_the_caption_extension_in_use_decides_what_is_a_caption(tmp_path):
    kwargs = _caption_next_to_first_image("usu bear, sitting", ".caption")(tmp_path, None)
    report = check_dataset(**kwargs, caption_extension=".caption", resolution=RESOLUTION)
    assert report.problems == () and report.concepts[0].captions == 1


def test_the_tokenizer_verdicts(tokenizer):
    usu, dog, split, letter = (judge_token(tokenizer, w) for w in ("usu", "dog", "zzqx", "a"))
    assert usu.is_single and not usu.is_common
    assert dog.is_single and dog.is_common
    assert not split.is_single and len(split.pieces) == 4
    assert letter.is_common  # a single character: among the most frequent tokens
    suggestions = suggest_tokens(tokenizer, exclude="usu")
    assert "usu" not in suggestions and set(suggestions) <= set(RARE_WORDS)


def test_report_json_is_plain_data(tmp_path):
    import json

    train = good_train(tmp_path, count=3)
    document = json.loads(json.dumps(check_dataset(train, resolution=RESOLUTION).to_dict()))
    assert document["status"] == "warning" and document["per_epoch"] == {"train_items": 60, "reg_items": 0, "steps": 60}
    assert document["concepts"][0]["smallest"] == [64, 64]
    assert document["problems"][0]["code"] == "concept.few_images"


def test_nothing_is_written_to_the_dataset(tmp_path):
    train = good_train(tmp_path, count=3)
    before = sorted((p, p.stat().st_mtime_ns) for p in tmp_path.rglob("*"))
    check_dataset(train, resolution=RESOLUTION)
    assert sorted((p, p.stat().st_mtime_ns) for p in tmp_path.rglob("*")) == before
