"""Encoding images to latents once, in memory or on disk, deterministically.

Encoding an image with the VAE costs more than a LoRA step of the UNet, so the latents of each
unique image are computed once. The cached latent is the mean of the VAE's distribution, or a
sample seeded by the run's seed and the image's name in its dataset (its path under the training
or regularization root: a moved or copied dataset gets the same latents), as kohya and diffusers
sample.

Without a cache (`cache_latents = "off"`) the latents are encoded at each use and stay on the
device, unchecked until the loop reads its losses back (checking each one would make the CPU wait
for the GPU); on a GPU the images are decoded ahead of the step in DataLoader workers
(`PixelFeed`). Decoding is deterministic, so the values do not depend on who decodes.
"""

from __future__ import annotations

import hashlib
import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

from engine.buckets import Size
from engine.files import atomic_write_bytes
from engine.seeds import generator

if TYPE_CHECKING:
    import torch

    from engine.families import LoadedModel


def encode_image(
    model: LoadedModel, pixels: torch.Tensor, *, mode: str, sample_generator: torch.Generator | None, on_host: bool = True
) -> torch.Tensor:
    """Latent of one image tensor (3 x H x W in [-1, 1]), scaled as the UNet expects.

    `on_host`: checked finite (a `FloatingPointError` otherwise) and returned on the CPU; else left
    on the VAE's device, unchecked, so that the CPU does not wait for the GPU."""
    import torch

    from engine.devices import host_to_device

    vae = model.vae
    with torch.no_grad():
        batch = host_to_device(pixels.unsqueeze(0), vae.device).to(vae.dtype)
        distribution = vae.encode(batch).latent_dist
        if mode == "mean":
            latent = distribution.mean
        else:
            noise = torch.randn(distribution.mean.shape, generator=sample_generator, dtype=torch.float32)
            latent = distribution.mean + distribution.std * host_to_device(noise, distribution.mean.device).to(distribution.mean.dtype)
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    latent = (latent.float() - shift) * vae.config.scaling_factor
    if not on_host:
        return latent[0]
    if not torch.isfinite(latent).all():
        raise FloatingPointError("the VAE produced NaN or infinite latents")
    return latent[0].cpu()


LatentKey = tuple[Path, Size, bool]  # (image, bucket size, mirrored)


class LatentCache:
    """Latents by image path. `keep` False encodes on every use (no caching, same values) and leaves
    them on the device; `folder` set keeps them on disk between runs too.

    `vae_in_use` is a context in which the VAE is on its device (it may wait in host memory once
    every latent is cached: engine/devices.py); `feed` hands over images decoded ahead of time."""

    def __init__(self, model: LoadedModel, *, mode: str, seed: int, names: dict[Path, str], keep: bool = True,
                 folder: Path | None = None):
        self.model = model
        self.names = names  # each image's name in its dataset (DatasetPlan.image_names): seeds its latent
        self.keep = keep
        self.mode = mode
        self.seed = seed
        self.folder = folder
        self.vae_in_use: Callable[[], AbstractContextManager] = nullcontext
        self.feed: PixelFeed | None = None
        self.nonfinite: torch.Tensor | None = None  # on the device: did an uncached latent hold NaN or inf?
        self._latents: dict[LatentKey, torch.Tensor] = {}
        self._vae_fingerprint: str | None = None

    def vae_fingerprint(self) -> str:
        """What the latents depend on besides the image: the encoder's weights, its dtype and config.
        (Two base models with the same VAE config often carry different VAEs; a VAE whose decoder
        alone was fine-tuned gives the same latents, and the same fingerprint.)"""
        if self._vae_fingerprint is None:
            import torch

            vae = self.model.vae
            digest = hashlib.blake2b(digest_size=16)
            for name, tensor in (*vae.encoder.state_dict().items(), *vae.quant_conv.state_dict().items()):
                digest.update(name.encode("utf-8"))
                digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
            config = sorted((k, str(v)) for k, v in vae.config.items())
            self._vae_fingerprint = f"{digest.hexdigest()}|{vae.dtype}|{config}"
        return self._vae_fingerprint

    def _disk_key(self, path: Path, size: Size, flip: bool) -> str:
        stat = path.stat()
        seed_part = self.seed if self.mode == "sample" else ""
        # The name seeds a sampled latent: part of the key (older caches, seeded by the absolute path, miss).
        name = self.names[path]
        text = f"{path.resolve()}|{name}|{stat.st_size}|{stat.st_mtime_ns}|{size}|{flip}|{self.mode}|{seed_part}|{self.vae_fingerprint()}"
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]

    def _disk_path(self, key: LatentKey) -> Path:
        assert self.folder is not None
        return self.folder / f"{self._disk_key(*key)}.safetensors"

    def _encode(self, path: Path, size: Size, flip: bool) -> torch.Tensor:
        key = (path, size, flip)
        fed = self.feed.take(key) if self.feed is not None else None
        pixels = fed if fed is not None else image_tensor(path, size, flip=flip)
        # Keyed by the image's name in its dataset, not where the dataset lives.
        sample_generator = generator(self.seed, "latent", self.names[path], size, flip)
        with self.vae_in_use():
            latent = encode_image(self.model, pixels, mode=self.mode, sample_generator=sample_generator, on_host=self.keep)
        if not self.keep:
            self._note_nonfinite(latent)
        return latent

    def _note_nonfinite(self, latent: torch.Tensor) -> None:
        import torch

        bad = ~torch.isfinite(latent).all()
        self.nonfinite = bad if self.nonfinite is None else self.nonfinite | bad

    def take_nonfinite(self, device: torch.device) -> torch.Tensor:
        """1.0 when a latent encoded since the last call held NaN or inf, else 0.0 (on the device,
        not read back: the caller reads it with the losses)."""
        import torch

        flag, self.nonfinite = self.nonfinite, None
        return flag.float() if flag is not None else torch.zeros((), device=device)

    def get(self, path: Path, size: Size, flip: bool = False) -> torch.Tensor:
        key = (path, size, flip)
        if key in self._latents:
            return self._latents[key]
        latent = self._load_or_encode(path, size, flip)
        if self.keep:
            self._latents[key] = latent
        return latent

    def to_encode(self, keys: list[LatentKey]) -> list[LatentKey]:
        """The keys, once each, whose latents are neither in memory nor on disk, in order."""
        unique = [key for key in dict.fromkeys(keys) if key not in self._latents]
        if self.folder is None:
            return unique
        return [key for key in unique if not self._disk_path(key).is_file()]

    def _load_or_encode(self, path: Path, size: Size, flip: bool) -> torch.Tensor:
        if self.folder is None:
            return self._encode(path, size, flip)
        from safetensors.torch import load, save

        cached = self._disk_path((path, size, flip))
        if cached.is_file():
            try:
                return load(cached.read_bytes())["latent"]
            except Exception:  # a damaged cache file is re-encoded, never trusted
                cached.unlink(missing_ok=True)
        latent = self._encode(path, size, flip)
        atomic_write_bytes(cached, save({"latent": latent.contiguous()}))
        return latent


class ImageTensors:
    """The training tensor of an image by its key (image, size, mirrored): a map-style dataset for
    torch's DataLoader, whose sampler yields the keys themselves."""

    def __getitem__(self, key: LatentKey) -> torch.Tensor:
        path, size, flip = key
        return image_tensor(path, size, flip=flip)


class PixelFeed:
    """Images decoded ahead of their use by DataLoader worker processes, in the order the loop will
    ask for them (pinned in memory on a GPU, so that their copy to it does not wait).

    The keys are read lazily, as the loader needs the next ones. `take(key)` gives the next decoded
    image when `key` is the one expected next, else None (the caller decodes it itself): a request
    out of order costs time, never a wrong image.
    """

    def __init__(self, keys: Iterable[LatentKey], *, workers: int, pin_memory: bool, lookahead: int):
        from torch.utils.data import DataLoader

        self._expected: deque[LatentKey] = deque()  # keys handed to the workers, not taken yet

        def handed_out() -> Iterator[LatentKey]:
            for key in keys:
                self._expected.append(key)
                yield key

        loader = DataLoader(
            ImageTensors(),  # type: ignore[arg-type]  # any object with __getitem__ will do
            sampler=handed_out(),  # type: ignore[arg-type]
            batch_size=None,  # one image at a time, in order; each image has its own size
            num_workers=workers,
            pin_memory=pin_memory,
            prefetch_factor=max(2, math.ceil(lookahead / workers)) if workers else None,
        )
        self._iterator: Iterator[torch.Tensor] | None = iter(loader)

    def take(self, key: LatentKey) -> torch.Tensor | None:
        if self._iterator is None or not self._expected or self._expected[0] != key:
            return None
        self._expected.popleft()
        return next(self._iterator)

    def close(self) -> None:
        """Stop the workers (also when the loop stops early)."""
        self._iterator = None
        self._expected.clear()


def image_tensor(path: Path, size: Size, *, flip: bool = False) -> torch.Tensor:
    """The training tensor of an image at its bucket size: 3 x height x width, values in [-1, 1]."""
    import numpy as np
    import torch
    from PIL import ImageOps

    from engine.dataset import open_image, resize_and_crop

    image = resize_and_crop(open_image(path), *size)
    if flip:
        image = ImageOps.mirror(image)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()
