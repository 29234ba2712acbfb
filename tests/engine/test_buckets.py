"""Aspect-ratio buckets and caption augmentation."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from engine.buckets import BucketSettings, assign_buckets, batch_count, bucket_resolutions, image_size
from engine.captions import augment_caption, flip_sample
from engine.config import load_answers
from engine.dataset import open_image, resize_and_crop
from engine.events import EventLog
from engine.plan import plan_training
from engine.train import Trainer
from tests.conftest import write_answers


def test_kohya_bucket_resolutions_at_512():
    sizes = bucket_resolutions(512, 256, 1024, 64)
    assert (512, 512) in sizes and (768, 320) in sizes and (320, 768) in sizes and (1024, 256) in sizes
    assert all(w * h <= 512 * 512 and w % 64 == 0 and h % 64 == 0 for w, h in sizes)
    assert all(256 <= side <= 1024 for size in sizes for side in size)


def test_exif_rotation_counts_for_the_bucket(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (160, 96)).save(path, exif=exif)
    assert image_size(path) == (96, 160)


def test_small_images_are_not_upscaled_when_asked(tmp_path):
    path = tmp_path / "small.png"
    Image.new("RGB", (100, 70)).save(path)
    settings = BucketSettings(enabled=True, min_size=64, max_size=256, step=32, no_upscale=True)
    assert assign_buckets([path], 128, settings) == {path: (96, 64)}


def test_batch_count_is_per_bucket():
    assert batch_count([(64, 64)] * 3 + [(96, 32)] * 3, 2) == 4


def make_mixed_dataset(root: Path) -> Path:
    concept = root / "train" / "5_usu bear"
    concept.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (160, 96), (200, 30 * i, 30)).save(concept / f"landscape{i}.png")
        Image.new("RGB", (96, 160), (30, 30 * i, 200)).save(concept / f"portrait{i}.png")
    return root / "train"


def test_mixed_portrait_and_landscape_train_without_cropping_one_bucket_per_batch(tmp_path, tiny_model_dir):
    train_dir = make_mixed_dataset(tmp_path)
    answers = write_answers(
        tmp_path,
        tiny_model_dir,
        train_dir,
        dataset={"resolution": 128, "buckets": True, "min_bucket": 64, "max_bucket": 256, "bucket_step": 32,
                 "flip": True, "shuffle_tags": True, "keep_tokens": 1},
        training={"max_steps": 4, "batch_size": 2},
    )
    plan = plan_training(load_answers(answers))
    for path, size in plan.sizes.items():
        expected = (160, 96) if path.name.startswith("landscape") else (96, 160)
        assert size == expected
        # The image already has its bucket's shape: no pixel is cropped.
        original = open_image(path)
        assert resize_and_crop(original, *size).tobytes() == original.tobytes()
    assert plan.batches_per_epoch == 2 * 8  # 15 items per bucket: ceil(15/2) each
    assert any("160x96: 15" in line for line in plan.breakdown())

    trainer = Trainer(plan, EventLog(None))
    for epoch in range(2):
        batches = trainer.batches(epoch)
        assert sum(len(b) for b in batches) == plan.dataset.items_per_epoch
        for batch in batches:
            assert len({plan.sizes[e.path] for _, e in batch}) == 1
    trainer.setup()
    path = next(iter(plan.sizes))
    latent = trainer.latents.get(path, plan.sizes[path])
    assert tuple(latent.shape[1:]) in ((12, 20), (20, 12))
    assert not trainer.latents.get(path, plan.sizes[path], True).equal(latent)  # the mirrored image was cached too
    result = trainer.run()
    assert result.steps == 4 and result.lora_path.is_file()


def test_caption_shuffle_keeps_the_first_tokens_and_is_seeded():
    caption = "usu bear, red scarf, sitting, forest, smiling"
    shuffled = {augment_caption(caption, seed=1, index=i, shuffle=True, keep_tokens=1, dropout=0.0) for i in range(20)}
    assert len(shuffled) > 3
    assert all(c.startswith("usu bear, ") and sorted(c.split(", ")) == sorted(caption.split(", ")) for c in shuffled)
    assert augment_caption(caption, seed=1, index=5, shuffle=True, keep_tokens=1, dropout=0.0) == augment_caption(
        caption, seed=1, index=5, shuffle=True, keep_tokens=1, dropout=0.0
    )


def test_caption_dropout_and_flip_rates():
    dropped = sum(augment_caption("usu bear", seed=0, index=i, shuffle=False, keep_tokens=0, dropout=0.25) == "" for i in range(2000))
    assert 400 < dropped < 600
    flipped = sum(flip_sample(seed=0, index=i, enabled=True) for i in range(2000))
    assert 900 < flipped < 1100
    assert not any(flip_sample(seed=0, index=i, enabled=False) for i in range(100))


def test_dataset_check_reports_the_buckets_from_its_one_decode(tmp_path):
    from engine.checks.dataset import check_dataset

    train_dir = make_mixed_dataset(tmp_path)
    settings = BucketSettings(enabled=True, min_size=64, max_size=256, step=32)
    report = check_dataset(train_dir, resolution=128, buckets=settings)
    assert report.buckets == {"96x160": 15, "160x96": 15}
    assert report.to_dict()["buckets"] == report.buckets
    assert check_dataset(train_dir, resolution=128).buckets == {"128x128": 30}
