"""The training loop: DreamBooth-style LoRA training, one readable function.

    load the base model -> add LoRA layers -> cache latents (and text conditioning when frozen)
    -> for each optimizer step: the family's objective noises the latents, the denoiser predicts,
       weighted loss, backward, step
    -> every few steps read the losses back and report them -> save the LoRA in kohya's format

Everything random is derived from the seed and the sample's global index (engine/seeds.py).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.captions import augment_caption, flip_sample
from engine.checkpoint import (
    LoadedCheckpoint,
    Position,
    check_same_dataset,
    commit_checkpoint,
    dataset_fingerprint,
    newest_valid_checkpoint,
    restore_rng_states,
    stage_checkpoint,
    staging_dir,
    write_rank_rng,
)
from engine.config import Answers
from engine.cpu_threads import ThreadChoice, choose_threads, recorded_threads, use_threads
from engine.dataset import Example
from engine.errors import UserError
from engine.events import EventLog
from engine.families import ImageGeometry
from engine.parking import captions_cacheable
from engine.plan import TrainingPlan, check_output_free
from engine.seeds import derive_seed, epoch_order

if TYPE_CHECKING:
    import torch

    from engine.families import LoadedModel
    from engine.latents import LatentKey


class TrainingFailed(Exception):
    """Training cannot go on (NaN loss, out of memory); carries a remedy for the user."""

    def __init__(self, message: str, remedy: str):
        super().__init__(message)
        self.remedy = remedy


@dataclass
class TrainResult:
    lora_path: Path
    steps: int
    epochs: int


def resolve_precision(requested: str, device_type: str, bf16_supported: bool) -> str:
    """`auto` becomes bf16 where supported, else fp16, and no on a CPU."""
    if device_type == "cpu":
        if requested == "fp16":
            raise UserError(
                "`training.mixed_precision = \"fp16\"` needs a GPU; this run is on the CPU",
                fix='use "no" (or "bf16") on a CPU, or "auto"',
            )
        return "no" if requested == "auto" else requested
    if requested == "auto":
        return "bf16" if bf16_supported else "fp16"
    return requested


def build_optimizer(answers: Answers, denoiser_params: list, te_param_lists: list[list], device_type: str):
    """AdamW (fused on CUDA: one kernel for every LoRA tensor, and no host-device sync under fp16's
    gradient scaler; the LoRA weights are float32 on the device), 8-bit AdamW or Prodigy, with one
    learning rate per part. On the CPU AdamW keeps torch's default implementation."""
    import torch

    training = answers.training
    groups = [{"params": denoiser_params, "lr": training.unet_lr}]
    te_rates = [training.text_encoder_lr, training.text_encoder_2_lr or training.text_encoder_lr]
    for params, lr in zip(te_param_lists, te_rates, strict=False):
        if params:
            groups.append({"params": params, "lr": lr})
    if training.optimizer == "adamw":
        return torch.optim.AdamW(groups, weight_decay=1e-2, fused=device_type == "cuda")
    if training.optimizer == "adamw8bit":
        if device_type != "cuda":
            raise UserError('`training.optimizer = "adamw8bit"` needs a CUDA GPU', fix='use "adamw"')
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise UserError("8-bit AdamW needs bitsandbytes", fix="pip install 'lora-wizard[bnb]', or use \"adamw\"") from None
        return bnb.optim.AdamW8bit(groups, weight_decay=1e-2)
    try:
        from prodigyopt import Prodigy
    except ImportError:
        raise UserError("the Prodigy optimizer needs prodigyopt", fix="pip install 'lora-wizard[prodigy]', or use \"adamw\"") from None
    return Prodigy(groups, weight_decay=1e-2)


def build_lr_scheduler(answers: Answers, optimizer, total_steps: int):
    from diffusers.optimization import get_scheduler

    training = answers.training
    name = {"constant": "constant_with_warmup"}.get(training.lr_scheduler, training.lr_scheduler)
    return get_scheduler(name, optimizer, num_warmup_steps=training.warmup_steps, num_training_steps=total_steps)


class Interrupted(Exception):
    """A stop was requested (SIGINT, SIGTERM or `lora-wizard stop`); a checkpoint was written."""

    def __init__(self, step: int, reason: str):
        super().__init__(f"stopped at step {step} ({reason})")
        self.step = step
        self.reason = reason


class Controls:
    """Requests from outside the loop, polled between steps: None, "checkpoint" or "stop"."""

    reason = ""

    def poll(self) -> str | None:
        return None


class Trainer:
    """Holds what the loop needs; `run()` is the loop."""

    before_checkpoint_commit = None  # a test hook (see engine.checkpoint.commit_checkpoint)
    data_workers: int | None = None  # image-decoding processes without a latent cache; None: engine.devices decides

    def __init__(self, plan: TrainingPlan, events: EventLog, *, run_dir: Path | None = None, controls: Controls | None = None):
        self.plan = plan
        self.answers = plan.answers
        self.events = events
        self.run_dir = run_dir
        self.controls = controls or Controls()
        self.fingerprint = dataset_fingerprint(plan.dataset)
        self.started_at = time.time()
        self.resumed = False
        self.cpu_threads: ThreadChoice | None = None  # decided once per run (engine/cpu_threads.py)
        self.rank, self.world, self.is_main = 0, plan.answers.training.processes, True
        self._geometry: dict[Path, ImageGeometry] = {}
        self.sample_prompts = []
        if plan.answers.samples.enabled:
            from engine.prompts import prompts_from_answers

            self.sample_prompts = prompts_from_answers(plan.answers.samples, plan.resolution)
        self.examples: list[Example] = plan.dataset.epoch_examples()
        self.session_id = str(random.randint(0, 2**32 - 1))  # kohya's ss_session_id

    # --- setup -------------------------------------------------------------------------------

    def setup(self) -> None:
        import torch
        from accelerate import Accelerator

        from engine.devices import Parking, enable_tf32, use_channels_last
        from engine.families import load_base_model
        from engine.families.flux import flux_options
        from engine.latents import LatentCache
        from engine.network import (
            NetworkSpec,
            add_network,
            load_lora_file_into,
            lora_parameters,
            text_encoder_parameters,
        )
        from engine.parking import offloadable_parts

        a = self.answers
        device_type = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
        bf16 = device_type == "cuda" and torch.cuda.is_bf16_supported()
        self.precision = resolve_precision(a.training.mixed_precision, device_type, bf16)
        # Under torchrun, accelerate joins the process group (NCCL on GPUs, gloo on CPUs).
        self.accelerator = Accelerator(mixed_precision=self.precision, cpu=device_type == "cpu")
        self.device = self.accelerator.device
        self.rank = self.accelerator.process_index
        self.world = self.accelerator.num_processes
        self.is_main = self.accelerator.is_main_process
        if self.world != a.training.processes:
            raise UserError(
                f"`training.processes = {a.training.processes}` but {self.world} processes were started",
                fix="start it with `lora-wizard train` (it launches the processes), or set processes to match",
            )
        if a.output.tensorboard and self.is_main:
            from engine.tensorboard import check_tensorboard_installed

            check_tensorboard_installed()
        enable_tf32(self.device)

        model = load_base_model(
            a.model.path, prediction=a.model.prediction, tokenizer=a.model.tokenizer, vae=a.model.vae, flux=flux_options(a.model, a.training)
        )
        self.model = model
        # Frozen base weights in the training precision on a GPU (as kohya: only the LoRA weights
        # are fp32). The base model's VAE stays fp32 (SDXL's overflows in fp16: kohya's
        # --no_half_vae); one given in `[model] vae` is taken to be fp16-safe (e.g.
        # madebyollin/sdxl-vae-fp16-fix) and runs in the training precision.
        weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.precision, torch.float32)
        if device_type == "cpu":
            weight_dtype = torch.float32
        self.parking = Parking(self.device, {"vae": [model.vae], "text_encoders": list(model.text_encoders)})
        parked = offloadable_parts(a)

        # The parts reach the GPU one at a time, each doing its caching work before the next
        # arrives (kohya's order), so setup never holds every part at once: for SDXL the fp32 VAE
        # encoding 1024 px images alone is ~3.4 GiB, with the UNet and text encoders ~9.7 GiB.
        model.vae.to(self.device, dtype=weight_dtype if a.model.vae else torch.float32).requires_grad_(False).eval()
        cache_folder = a.output.dir / ".latent-cache" if a.training.cache_latents == "disk" else None
        self.latents = LatentCache(
            model, mode=a.training.latents, seed=a.training.seed, keep=a.training.cache_latents != "off", folder=cache_folder
        )
        self.latents.vae_in_use = lambda: self.parking.in_use("vae")
        if a.training.cache_latents != "off":
            self.cache_all_latents()
        self.parking.park(parked & {"vae"})

        for encoder in model.text_encoders:
            encoder.to(self.device, dtype=weight_dtype).requires_grad_(False)
        self._conditioning_cache: dict[str, dict[str, Any]] = {}
        if captions_cacheable(a):
            # Every caption now, under the loop's autocast, so that the frozen text encoders can
            # wait in host memory while the UNet trains.
            with self.accelerator.autocast():
                self.encode_captions([e.caption for e in self.examples])
        self.parking.park(parked & {"text_encoders"})

        self.place_denoiser(weight_dtype)
        if use_channels_last(self.device, a.training.channels_last):
            model.denoiser.to(memory_format=torch.channels_last)  # before the LoRA layers: those stay contiguous
        # The LoRA's initial (random) down weights come from the global generator: seed it.
        torch.manual_seed(derive_seed(a.training.seed, "lora-init"))
        add_network(model, NetworkSpec.from_section(a.network), train_text_encoder=a.network.train_text_encoder)
        # What of `[network] init_from` was kept fresh or ignored: the `ready` event's notes say so.
        self.notes = load_lora_file_into(model, a.network.init_from).notes if a.network.init_from else []
        self.denoiser_params, self.te_params = lora_parameters(model)
        for param in (*self.denoiser_params, *self.te_params):
            param.data = param.data.float()
        model.denoiser.train()
        trained_encoders = model.family.trainable_text_encoders(model) if a.network.train_text_encoder else []
        for encoder in model.text_encoders:
            encoder.train(any(encoder is trained for trained in trained_encoders))
        if a.training.gradient_checkpointing or a.training.offload_blocks:
            model.denoiser.enable_gradient_checkpointing()
            for encoder in trained_encoders:
                encoder.gradient_checkpointing_enable()

        self.optimizer = build_optimizer(a, self.denoiser_params, text_encoder_parameters(model), device_type)
        self.lr_scheduler = build_lr_scheduler(a, self.optimizer, self.plan.total_steps)
        # Parked text encoders stay out of `prepare`: it would move them back to the GPU, and they
        # only run again for sample images, which use the unwrapped model anyway.
        encoders_in_loop = [] if "text_encoders" in self.parking.parked else list(model.text_encoders)
        # Group offloading places the blocks itself: accelerate must not move the whole denoiser over.
        offloaded = a.training.offload_blocks and self.device.type == "cuda"
        placement = [not offloaded] + [True] * (len(encoders_in_loop) + 1)
        model.denoiser, *prepared_encoders, self.optimizer = self.accelerator.prepare(
            model.denoiser, *encoders_in_loop, self.optimizer, device_placement=placement
        )
        if encoders_in_loop:
            model.text_encoders = prepared_encoders
        if a.training.compile:
            model.denoiser.compile()  # in place: the module and its parameter names stay as they are

    def place_denoiser(self, weight_dtype: torch.dtype) -> None:
        """The frozen denoiser on the device in the training precision; with `fp8_base` stored in
        float8 and widened per layer, with `offload_blocks` its blocks in host memory until they run
        (diffusers' mechanisms: engine/families/flux_memory.py)."""
        from engine.families.flux_memory import offload_blocks, store_in_fp8

        training = self.answers.training
        denoiser = self.model.denoiser
        if training.offload_blocks and self.device.type == "cuda":
            denoiser.to(dtype=weight_dtype)
            offload_blocks(denoiser, self.device)
        else:
            denoiser.to(self.device, dtype=weight_dtype)
        denoiser.requires_grad_(False)
        if training.fp8_base:
            store_in_fp8(denoiser, weight_dtype)

    def cache_all_latents(self) -> None:
        """Encode every image (and its mirror when flipping) once; on a GPU the images are decoded
        ahead in worker processes while the VAE encodes."""
        a = self.answers
        flips = (False, True) if a.dataset.flip else (False,)
        keys = [(path, self.plan.sizes[path], flip) for path in dict.fromkeys(e.path for e in self.examples) for flip in flips]
        with self.decoding_ahead(self.latents.to_encode(keys) or None):
            for key in keys:
                try:
                    self.latents.get(*key)
                except FloatingPointError as exc:
                    raise TrainingFailed(f"{exc} for {key[0]}", self.nan_latents_remedy()) from None

    def nan_latents_remedy(self) -> str:
        import torch

        if self.answers.model.vae and self.model.vae.dtype != torch.float32:
            return (
                f"the VAE from `[model] vae` runs in {self.precision} here and is not fp16-safe: give an fp16-safe VAE "
                "(e.g. madebyollin/sdxl-vae-fp16-fix for SDXL), or remove the key (the base model's VAE runs in fp32)"
            )
        return "check the image; the VAE runs in fp32 here, so an fp16 VAE overflow is not the cause"

    def run_folder(self) -> Path:
        a = self.answers
        return self.run_dir or a.output.dir / f"{a.output.name}.run"

    def decoding_workers(self) -> int:
        from engine.devices import loader_workers

        return self.data_workers if self.data_workers is not None else loader_workers(self.device, self.world)

    @contextmanager
    def decoding_ahead(self, keys: Iterable[LatentKey] | None) -> Iterator[None]:
        """While inside, the images of `keys` are decoded in this order by DataLoader workers, ahead
        of the VAE that encodes them (on a GPU; on a CPU run the training thread decodes them)."""
        from engine.latents import PixelFeed

        workers = self.decoding_workers()
        if not workers or keys is None:
            yield
            return
        lookahead = 2 * self.answers.training.batch_size * self.answers.training.gradient_accumulation
        feed = PixelFeed(keys, workers=workers, pin_memory=self.device.type == "cuda", lookahead=lookahead)
        self.latents.feed = feed
        try:
            yield
        finally:
            feed.close()
            self.latents.feed = None

    # --- one batch ---------------------------------------------------------------------------

    def conditioning(self, captions: list[str]) -> dict[str, Any]:
        import torch

        model = self.model
        family = model.family
        clip_skip = self.answers.training.clip_skip
        if self.answers.network.train_text_encoder:
            return family.encode(model, family.tokenize(model, captions), clip_skip)
        if not captions_cacheable(self.answers):  # too many variants to cache: encode each time, frozen
            with torch.no_grad():
                return family.encode(model, family.tokenize(model, captions), clip_skip)
        self.encode_captions(captions)
        parts = [self._conditioning_cache[c] for c in captions]
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def encode_captions(self, captions: list[str]) -> None:
        """Cache the frozen text encoders' conditioning of the captions not cached yet. Each caption
        is encoded on its own, so the values do not depend on which captions shared a batch (a
        resumed run sees other batches first)."""
        import torch

        model = self.model
        family = model.family
        missing = [c for c in dict.fromkeys(captions) if c not in self._conditioning_cache]
        if not missing:
            return
        with torch.no_grad(), self.parking.in_use("text_encoders"):
            for caption in missing:
                tokens = family.tokenize(model, [caption])
                self._conditioning_cache[caption] = family.encode(model, tokens, self.answers.training.clip_skip)

    def local_loss(self, batch: list[tuple[int, Example]]) -> torch.Tensor:
        """This process's share of the loss of a global batch, scaled so that the average over
        processes (which data-parallel training takes of the gradients) is the batch's mean loss."""
        share = len(batch[self.rank :: self.world])  # 0 in a short last batch: a stand-in item, weight 0
        return self.batch_loss(self.local_items(batch)) * (share * self.world / len(batch))

    def local_items(self, batch: list[tuple[int, Example]]) -> list[tuple[int, Example]]:
        """The items of a global batch whose loss this process computes: its share, or the first
        item as a stand-in when a short last batch leaves it none (it still takes part in the
        gradient exchange)."""
        return batch[self.rank :: self.world] or batch[:1]

    def latent_key(self, index: int, example: Example) -> LatentKey:
        """(image, bucket size, mirrored) of the sample with global index `index`."""
        d = self.answers.dataset
        return example.path, self.plan.sizes[example.path], flip_sample(seed=self.answers.training.seed, index=index, enabled=d.flip)

    def upcoming_latent_keys(self, start: Position) -> Iterator[LatentKey]:
        """The latents this process will ask for from `start` to the end, in order (`run`'s walk)."""
        step = start.step
        for epoch in range(start.epoch, self.plan.epochs):
            groups = self.optimizer_steps(epoch)
            for group in groups[start.group if epoch == start.epoch else 0 :]:
                if step >= self.plan.total_steps:
                    return
                step += 1
                for batch in group:
                    for index, example in self.local_items(batch):
                        yield self.latent_key(index, example)

    def geometry(self, path: Path) -> ImageGeometry:
        """How an image is fitted to its bucket (its file header is read once)."""
        if path not in self._geometry:
            from engine.buckets import crop_top_left, image_size

            original, target = image_size(path), self.plan.sizes[path]
            self._geometry[path] = ImageGeometry(original, crop_top_left(original, target), target)
        return self._geometry[path]

    def batch_loss(self, batch: list[tuple[int, Example]]) -> torch.Tensor:
        """Weighted denoising loss of a batch of (global sample index, example): the family's
        objective noises the latents and scores the family's prediction."""
        import torch

        from engine.devices import host_to_device

        a = self.answers
        model = self.model
        d = a.dataset
        seed = a.training.seed
        # Cached latents are on the CPU, uncached ones on the device. Every copy to the device is
        # pinned and non-blocking on a GPU: nothing in a step makes the CPU wait for the GPU.
        latents = host_to_device(torch.stack([self.latents.get(*self.latent_key(i, e)) for i, e in batch]), self.device)
        captions = [
            augment_caption(e.caption, seed=seed, index=i, shuffle=d.shuffle_tags, keep_tokens=d.keep_tokens, dropout=d.caption_dropout)
            for i, e in batch
        ]
        noised = model.objective.noised(latents, [i for i, _ in batch], a.training)
        with self.accelerator.autocast():
            conditioning = {**self.conditioning(captions), **noised.conditioning}
            geometry = [self.geometry(e.path) for _, e in batch]
            prediction = model.family.predict(model, noised.inputs, noised.timesteps, conditioning, geometry)
        loss = model.objective.loss(prediction, noised)
        weights = host_to_device(torch.tensor([a.dataset.prior_loss_weight if e.is_reg else 1.0 for _, e in batch]), self.device)
        return (loss * weights).mean()

    # --- the loop ----------------------------------------------------------------------------

    def batches(self, epoch: int) -> list[list[tuple[int, Example]]]:
        """One epoch's batches of (global sample index, example): the items in a seeded shuffled
        order, split by bucket (each batch from one bucket), the batches shuffled again when there
        are several buckets."""
        size = self.answers.training.batch_size * self.world  # the global batch, split across processes
        seed = self.answers.training.seed
        per_epoch = len(self.examples)
        by_bucket: dict[tuple[int, int], list[tuple[int, Example]]] = {}
        for position, i in enumerate(epoch_order(seed, epoch, per_epoch)):
            example = self.examples[i]
            by_bucket.setdefault(self.plan.sizes[example.path], []).append((epoch * per_epoch + position, example))
        batches = [items[j : j + size] for _, items in sorted(by_bucket.items()) for j in range(0, len(items), size)]
        if len(by_bucket) > 1:
            batches = [batches[i] for i in epoch_order(seed, epoch, len(batches), what="batches")]
        return batches

    def optimizer_steps(self, epoch: int) -> list[list[list[tuple[int, Example]]]]:
        """One epoch's optimizer steps, each a group of accumulated batches."""
        accumulation = self.answers.training.gradient_accumulation
        batches = self.batches(epoch)
        return [batches[i : i + accumulation] for i in range(0, len(batches), accumulation)]

    def run(self, start: Position | None = None) -> TrainResult:
        start = start or Position(step=0, epoch=0, group=0)
        uncached = None if self.latents.keep else self.upcoming_latent_keys(start)
        with self.tensorboard(start), self.decoding_ahead(uncached):
            return self._run(start)

    @contextmanager
    def tensorboard(self, start: Position) -> Iterator[None]:
        """With `[output] tensorboard`, the main process writes the step and sample events to
        <run folder>/tensorboard while inside."""
        if not (self.answers.output.tensorboard and self.is_main):
            yield
            return
        from engine.tensorboard import TensorBoardLog

        # A resumed run replaces what the killed one logged after its checkpoint.
        board = TensorBoardLog(self.run_folder() / "tensorboard", purge_step=start.step + 1 if start.step else None)
        self.events.listeners.append(board)
        try:
            yield
        finally:
            self.events.listeners.remove(board)
            board.close()

    def _run(self, start: Position) -> TrainResult:
        a = self.answers
        plan = self.plan
        step = start.step
        pending: list[tuple[int, int, Any, float]] = []  # (step, epoch, loss on the device, lr)
        self.events.emit("ready", device=str(self.device), precision=self.precision, total_steps=plan.total_steps,
                         notes=self.notes, cpu_threads=self.cpu_threads.threads if self.cpu_threads else None)
        if a.samples.at_start and step == 0:
            self.sample(step=0, epoch=0)
        for epoch in range(start.epoch, plan.epochs):
            groups = self.optimizer_steps(epoch)
            first = start.group if epoch == start.epoch else 0
            for index in range(first, len(groups)):
                if step >= plan.total_steps:
                    break
                self.optimizer_step(groups[index])
                step += 1
                pending.append((step, epoch + 1, self.last_loss, self.lr_scheduler.get_last_lr()[0]))
                # Reading the loss back forces a device sync: do it every few steps, not every step.
                logged = step % a.training.log_every_steps == 0 or step == plan.total_steps
                if logged:
                    self.report(pending)
                    pending = []
                if a.samples.every_steps and step % a.samples.every_steps == 0:
                    self.sample(step=step, epoch=epoch + 1)
                position = Position(step, epoch, index + 1) if index + 1 < len(groups) else Position(step, epoch + 1, 0)
                # With several processes, agreeing on a request is a collective that waits for the
                # GPU: it is asked when the losses are read back anyway.
                request = self.poll_controls() if self.world == 1 or logged else None
                every = a.checkpoints.every_steps
                if request or (every and step % every == 0 and index + 1 < len(groups)):
                    self.report(pending)
                    pending = []
                    self.checkpoint(position)
                if request == "stop":
                    raise Interrupted(step, self.controls.reason)
            self.report(pending)
            pending = []
            self.events.emit("epoch", epoch=epoch + 1, epochs=plan.epochs, step=step)
            sampled_here = a.samples.every_steps and step % a.samples.every_steps == 0
            if a.samples.every_epochs and (epoch + 1) % a.samples.every_epochs == 0 and not sampled_here:
                self.sample(step=step, epoch=epoch + 1)
            done = step >= plan.total_steps
            if a.training.save_every_epochs and (epoch + 1) % a.training.save_every_epochs == 0 and not done:
                # A resumed run may write an epoch file again: the same bytes, so it may replace it.
                epoch_file = a.output.dir / f"{a.output.name}-{epoch + 1:06d}.safetensors"
                self.save(epoch_file, step=step, epoch=epoch + 1, overwrite=a.output.overwrite or self.resumed)
            if a.checkpoints.every_epoch and not done:
                self.checkpoint(Position(step, epoch + 1, 0))
            if done:
                break
        final_epoch = min(plan.epochs, math.ceil(step / plan.steps_per_epoch))
        path = self.save(a.lora_path, step=step, epoch=final_epoch)
        self.accelerator.wait_for_everyone()
        return TrainResult(lora_path=path, steps=step, epochs=final_epoch)

    def optimizer_step(self, group: list[list[tuple[int, Example]]]) -> None:
        """Forward and backward over the accumulated batches of one step, then update."""
        a = self.answers
        group_loss = 0.0
        for i, batch in enumerate(group):
            last = i == len(group) - 1
            sync = nullcontext() if last or self.accelerator.num_processes == 1 else self.accelerator.no_sync(self.model.denoiser)
            with sync:
                loss = self.local_loss(batch) / len(group)
                self.accelerator.backward(loss)
            group_loss = group_loss + loss.detach()
        if a.training.max_grad_norm:
            self.accelerator.clip_grad_norm_([*self.denoiser_params, *self.te_params], a.training.max_grad_norm)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.last_loss = group_loss

    def report(self, pending: list[tuple[int, int, Any, float]]) -> None:
        """Read the pending losses back from the device and write their step events."""
        import torch

        if not pending:
            return
        # One read-back for the losses and the uncached latents' check (1.0: one held NaN or inf).
        latent_trouble = self.latents.take_nonfinite(self.device)
        stacked = torch.stack([*(loss.float() for _, _, loss, _ in pending), latent_trouble])
        if self.world > 1:
            stacked = self.accelerator.reduce(stacked, reduction="mean")
        *values, trouble = stacked.cpu().tolist()
        if trouble:
            raise TrainingFailed(
                f"the VAE produced NaN or infinite latents for an image of steps {pending[0][0]}-{pending[-1][0]}",
                self.nan_latents_remedy(),
            )
        for (step, epoch, _, lr), value in zip(pending, values, strict=True):
            if not math.isfinite(value):
                raise TrainingFailed(
                    f"the loss became {value} at step {step}",
                    "lower the learning rate; with fp16 try bf16 or no mixed precision; check the images are not corrupt",
                )
            self.events.emit("step", step=step, total_steps=self.plan.total_steps, epoch=epoch, loss=value, lr=lr)

    # --- checkpoints -------------------------------------------------------------------------

    def unwrapped_model(self) -> LoadedModel:
        """The model with accelerate's wrappers (data-parallel, mixed precision) taken off."""
        from dataclasses import replace

        unwrap = self.accelerator.unwrap_model
        return replace(self.model, denoiser=unwrap(self.model.denoiser), text_encoders=[unwrap(e) for e in self.model.text_encoders])

    def trainable_state(self) -> dict[str, Any]:
        """The LoRA weights by parameter name (unet.* / te0.*)."""
        named = {}
        for prefix, module in (("unet", self.model.denoiser), *((f"te{i}", e) for i, e in enumerate(self.model.text_encoders))):
            for name, param in self.accelerator.unwrap_model(module).named_parameters():
                if param.requires_grad:
                    named[f"{prefix}.{name}"] = param
        return named

    def checkpoint(self, position: Position) -> Path | None:
        """Main process writes the shared state, every process its RNG file, then main commits."""
        if self.run_dir is None:
            return None
        if self.is_main:
            state = {"optimizer": self.optimizer.state_dict(), "lr_scheduler": self.lr_scheduler.state_dict()}
            if self.accelerator.scaler is not None:
                state["scaler"] = self.accelerator.scaler.state_dict()
            stage_checkpoint(self.run_dir, position, lora=self.trainable_state(), training_state=state, fingerprint=self.fingerprint)
        self.accelerator.wait_for_everyone()
        staging = staging_dir(self.run_dir, position)
        write_rank_rng(staging, self.rank)
        self.accelerator.wait_for_everyone()
        if not self.is_main:
            return None
        path = commit_checkpoint(staging, keep_last=self.answers.checkpoints.keep_last, before_commit=self.before_checkpoint_commit)
        self.events.emit("checkpoint", path=str(path), step=position.step, epoch=position.epoch)
        return path

    def sample(self, *, step: int, epoch: int) -> None:
        """Sample images from the live model into the run folder (main process only)."""
        if not self.sample_prompts or not self.is_main:
            return
        from engine.sampling import sample_images

        a = self.answers
        # A parked VAE comes back for the images (diffusers' pipeline runs on its device), parked
        # text encoders only while the prompts are encoded; a compiled UNet runs uncompiled (the
        # sampler's shapes would compile it again).
        with self.parking.in_use("vae"), self.uncompiled():
            paths = sample_images(
                self.unwrapped_model(), self.sample_prompts, self.run_folder() / "samples", name=a.output.name, step=step,
                seed=a.training.seed, clip_skip=a.training.clip_skip,
                text_encoders_in_use=lambda: self.parking.in_use("text_encoders"),
            )
        self.events.emit("sample", step=step, epoch=epoch, paths=[str(p) for p in paths],
                         prompts=[p.prompt for p in self.sample_prompts])

    def uncompiled(self) -> Any:
        if not self.answers.training.compile:
            return nullcontext()
        import torch

        return torch.compiler.set_stance("force_eager")

    def poll_controls(self) -> str | None:
        """The main process reads the requests; with several processes it tells the others, so
        that all stop or checkpoint at the same step."""
        request = self.controls.poll() if self.is_main else None
        if self.world == 1:
            return request
        from accelerate.utils import broadcast_object_list

        shared = broadcast_object_list([request, self.controls.reason], from_process=0)
        self.controls.reason = shared[1]
        return shared[0]

    def restore(self, checkpoint: LoadedCheckpoint) -> None:
        import torch

        params = self.trainable_state()
        missing = set(params) ^ set(checkpoint.lora)
        if missing:
            raise UserError(
                f"the checkpoint does not match this network ({sorted(missing)[0]} ...)",
                where=checkpoint.path,
                fix="resume with the answers the run was started with (the run folder's answers.toml)",
            )
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(checkpoint.lora[name])
        state = checkpoint.training_state
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        if "scaler" in state and self.accelerator.scaler is not None:
            self.accelerator.scaler.load_state_dict(state["scaler"])
        if checkpoint.ranks != self.world:
            raise UserError(
                f"this checkpoint was written by {checkpoint.ranks} processes; this run has {self.world}",
                where=checkpoint.path,
                fix=f"resume with `[training] processes = {checkpoint.ranks}`",
            )
        restore_rng_states(checkpoint.rng_of(self.rank))

    # --- output ------------------------------------------------------------------------------

    def save(self, path: Path, *, step: int, epoch: int, overwrite: bool | None = None) -> Path:
        import torch

        from engine.network import kohya_metadata, kohya_state_dict, save_lora_file

        a = self.answers
        if not self.is_main:
            return path
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[a.output.dtype]
        plan = self.plan
        finished = path == a.lora_path
        stats = {
            "started_at": self.started_at,
            "finished_at": time.time() if finished else None,
            "steps": step,
            "epoch": epoch,
            "max_train_steps": plan.total_steps,
            "num_train_images": plan.dataset.num_train_items,
            "num_reg_images": plan.dataset.num_reg_items,
            "num_batches_per_epoch": plan.batches_per_epoch,
            "resolution": plan.resolution,
            "dataset_dirs": plan.dataset.dataset_dirs(),
            "reg_dataset_dirs": plan.dataset.dataset_dirs(reg=True),
            "tag_frequency": plan.dataset.tag_frequency(),
            "session_id": self.session_id,
            "mixed_precision": self.precision,
        }
        tensors = kohya_state_dict(self.unwrapped_model(), dtype=dtype)
        metadata = kohya_metadata(model=self.model, answers=a, stats=stats)
        overwrite = a.output.overwrite if overwrite is None else overwrite
        saved = save_lora_file(path, tensors, metadata, overwrite=overwrite)
        self.events.emit("saved", path=str(saved), step=step, epoch=epoch)
        return saved


def train(plan: TrainingPlan, events: EventLog, *, run_dir: Path | None = None, controls: Controls | None = None,
          resume: bool = False) -> TrainResult:
    """Train the LoRA the plan describes, reporting through `events`.

    With `run_dir`, checkpoints are written there; with `resume`, training continues from the
    newest valid checkpoint in it (damaged ones are skipped with a message)."""
    check_output_free(plan.answers)
    trainer = Trainer(plan, events, run_dir=run_dir, controls=controls)
    start = None
    checkpoint = None
    if resume and run_dir is not None:
        def skipped(path: Path, reason: str) -> None:
            events.emit("checkpoint_skipped", path=str(path), reason=reason)

        checkpoint = newest_valid_checkpoint(run_dir, on_skip=skipped)
        if checkpoint is not None:
            check_same_dataset(checkpoint.fingerprint, trainer.fingerprint, run_dir)
    trainer.cpu_threads = choose_threads(
        plan.answers.training.cpu_threads,
        recorded=recorded_threads(run_dir / "events.jsonl") if resume and run_dir is not None else None,
        processes=plan.answers.training.processes,
    )
    trainer.cpu_threads = use_threads(trainer.cpu_threads)
    trainer.setup()
    if checkpoint is not None:
        trainer.restore(checkpoint)
        trainer.resumed = True
        start = checkpoint.position
        events.emit("resumed", step=start.step, epoch=start.epoch, checkpoint=str(checkpoint.path))
    return trainer.run(start)
