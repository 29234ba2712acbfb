"""Encoding images to latents once, in memory or on disk, deterministically.

Encoding an image with the VAE costs more than a LoRA step of the UNet, so the latents of each
unique image are computed once. The cached latent is the mean of the VAE's distribution, or a
sample seeded by the run's seed and the image's path (kohya and diffusers sample).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from engine.buckets import Size
from engine.files import atomic_write_bytes
from engine.seeds import generator

if TYPE_CHECKING:
    import torch

    from engine.families import LoadedModel


def encode_image(model: LoadedModel, pixels: torch.Tensor, *, mode: str, sample_generator: torch.Generator | None) -> torch.Tensor:
    """Latent of one image tensor (3 x H x W in [-1, 1]), scaled as the UNet expects, on the CPU."""
    import torch

    vae = model.vae
    with torch.no_grad():
        batch = pixels.unsqueeze(0).to(vae.device, dtype=vae.dtype)
        distribution = vae.encode(batch).latent_dist
        if mode == "mean":
            latent = distribution.mean
        else:
            noise = torch.randn(distribution.mean.shape, generator=sample_generator, dtype=torch.float32)
            latent = distribution.mean + distribution.std * noise.to(distribution.mean.device, distribution.mean.dtype)
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    latent = (latent.float() - shift) * vae.config.scaling_factor
    if not torch.isfinite(latent).all():
        raise FloatingPointError("the VAE produced NaN or infinite latents")
    return latent[0].cpu()


class LatentCache:
    """Latents by image path. `keep` False encodes on every use (no caching, same values);
    `folder` set keeps them on disk between runs too."""

    def __init__(self, model: LoadedModel, *, mode: str, seed: int, keep: bool = True, folder: Path | None = None):
        self.model = model
        self.keep = keep
        self.mode = mode
        self.seed = seed
        self.folder = folder
        self._latents: dict[tuple[Path, Size, bool], torch.Tensor] = {}

    def _disk_key(self, path: Path, size: Size, flip: bool) -> str:
        stat = path.stat()
        vae_config = sorted((k, str(v)) for k, v in self.model.vae.config.items())
        seed_part = self.seed if self.mode == "sample" else ""
        text = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{size}|{flip}|{self.mode}|{seed_part}|{vae_config}"
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]

    def _encode(self, path: Path, size: Size, flip: bool) -> torch.Tensor:
        pixels = image_tensor(path, size, flip=flip)
        sample_generator = generator(self.seed, "latent", path.resolve(), size, flip)
        return encode_image(self.model, pixels, mode=self.mode, sample_generator=sample_generator)

    def get(self, path: Path, size: Size, flip: bool = False) -> torch.Tensor:
        key = (path, size, flip)
        if key in self._latents:
            return self._latents[key]
        latent = self._load_or_encode(path, size, flip)
        if self.keep:
            self._latents[key] = latent
        return latent

    def _load_or_encode(self, path: Path, size: Size, flip: bool) -> torch.Tensor:
        if self.folder is None:
            return self._encode(path, size, flip)
        from safetensors.torch import load, save

        cached = self.folder / f"{self._disk_key(path, size, flip)}.safetensors"
        if cached.is_file():
            try:
                return load(cached.read_bytes())["latent"]
            except Exception:  # a damaged cache file is re-encoded, never trusted
                cached.unlink(missing_ok=True)
        latent = self._encode(path, size, flip)
        atomic_write_bytes(cached, save({"latent": latent.contiguous()}))
        return latent


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
