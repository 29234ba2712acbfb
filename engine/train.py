"""The training loop: DreamBooth-style LoRA training, nanoGPT-style: set up, then one walk over the steps.

    load the base model -> cache latents (and text conditioning when frozen) -> add LoRA layers
    -> for each optimizer step (engine/schedule.py): noise the latents, predict, weighted MSE,
       backward, step -> carry out what engine/cadence.py says follows it (log, sample, save,
       checkpoint, stop) -> save the LoRA in kohya's format

Everything random is derived from the seed and the sample's global index (engine/seeds.py).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.cadence import Actions, Cadence
from engine.captions import augment_caption, flip_sample
from engine.checkpoint import (
    Position,
    check_same_dataset,
    dataset_fingerprint,
    newest_valid_checkpoint,
)
from engine.controls import Controls, Interrupted, TrainingFailed, TrainResult
from engine.cpu_threads import ThreadChoice, choose_threads, recorded_threads, use_threads
from engine.dataset import Example
from engine.events import Checkpointed, CheckpointSkipped, EpochEnded, EventLog, Ready, Resumed, Step
from engine.families import ImageGeometry
from engine.plan import TrainingPlan, check_output_free
from engine.schedule import Batch, PlannedStep, Schedule

if TYPE_CHECKING:
    import torch

    from engine.conditioning import CaptionConditioning
    from engine.devices import Parking
    from engine.families import LoadedModel
    from engine.latents import LatentCache, LatentKey
    from engine.outputs import RunOutputs
    from engine.train_state import TrainingState


class Trainer:
    """Holds what the loop needs: `setup()` builds it, `run()` is the loop."""

    before_checkpoint_commit = None  # a test hook (see engine.checkpoint.commit_checkpoint)
    data_workers: int | None = None  # image-decoding processes without a latent cache; None: engine.devices decides

    def __init__(self, plan: TrainingPlan, events: EventLog, *, run_dir: Path | None = None, controls: Controls | None = None):
        a = plan.answers
        self.plan = plan
        self.answers = a
        self.events = events
        self.run_dir = run_dir
        self.controls = controls or Controls()
        self.fingerprint = dataset_fingerprint(plan.dataset)
        self.started_at = time.time()
        self.resumed = False
        self.cpu_threads: ThreadChoice | None = None  # decided once per run (engine/cpu_threads.py)
        self.session_id = str(random.randint(0, 2**32 - 1))  # kohya's ss_session_id
        self.examples: list[Example] = plan.dataset.epoch_examples()
        self.schedule = Schedule(self.examples, plan.sizes, a.training.seed, plan.global_batch,
                                 a.training.gradient_accumulation, plan.epochs, plan.total_steps)
        self.cadence = Cadence.from_answers(a, total_steps=plan.total_steps, steps_per_epoch=plan.steps_per_epoch)
        self.sample_prompts = []
        if a.samples.enabled:
            from engine.prompts import prompts_from_answers

            self.sample_prompts = prompts_from_answers(a.samples, plan.resolution)
        self.rank, self.world, self.is_main = 0, a.training.processes, True
        self.pending: list[tuple[int, int, Any, float]] = []  # (step, epoch, loss on the device, lr): not yet reported
        self._geometry: dict[Path, ImageGeometry] = {}
        # Built by setup(), phase by phase:
        self.precision = "no"
        self.accelerator: Any = None
        self.device: Any = None
        self.weight_dtype: Any = None  # the frozen base weights' dtype
        self.model: LoadedModel = None  # type: ignore[assignment]
        self.parking: Parking = None  # type: ignore[assignment]
        self.latents: LatentCache = None  # type: ignore[assignment]
        self.conditioning: CaptionConditioning = None  # type: ignore[assignment]
        self.notes: list[str] = []  # what of `[network] init_from` was kept fresh or ignored
        self.denoiser_params: list = []
        self.te_params: list = []
        self.optimizer: Any = None
        self.lr_scheduler: Any = None
        self.state: TrainingState = None  # type: ignore[assignment]
        self.outputs: RunOutputs = None  # type: ignore[assignment]

    # --- setup -------------------------------------------------------------------------------

    def setup(self) -> None:
        """The parts reach the GPU one at a time, each doing its caching work before the next
        arrives (kohya's order), so setup never holds every part at once: for SDXL the fp32 VAE
        encoding 1024 px images alone is ~3.4 GiB, with the UNet and text encoders ~9.7 GiB."""
        from engine.devices import Parking
        from engine.families import load_base_model
        from engine.families.flux import flux_options
        from engine.outputs import RunOutputs
        from engine.parking import offloadable_parts
        from engine.setup import add_lora_layers, frozen_dtype, prepare_for_training, start_accelerator
        from engine.train_state import TrainingState

        a = self.answers
        self.accelerator, self.precision, device_type = start_accelerator(a)
        self.device = self.accelerator.device
        self.rank, self.world, self.is_main = self.accelerator.process_index, self.accelerator.num_processes, self.accelerator.is_main_process
        self.model = load_base_model(
            a.model.path, prediction=a.model.prediction, tokenizer=a.model.tokenizer, vae=a.model.vae, flux=flux_options(a.model, a.training)
        )
        self.weight_dtype = frozen_dtype(self.precision, device_type)
        self.parking = Parking(self.device, {"vae": [self.model.vae], "text_encoders": list(self.model.text_encoders)})
        parked = offloadable_parts(a)
        self.cache_latents()
        self.parking.park(parked & {"vae"})
        self.cache_captions()
        self.parking.park(parked & {"text_encoders"})
        self.denoiser_params, self.te_params, self.notes = add_lora_layers(self.model, a, self.device, self.weight_dtype)
        self.optimizer, self.lr_scheduler = prepare_for_training(
            self.accelerator, self.model, a, denoiser_params=self.denoiser_params, total_steps=self.plan.total_steps,
            device_type=device_type, text_encoders_parked="text_encoders" in self.parking.parked,
        )
        self.state = TrainingState(self.accelerator, self.model, self.optimizer, self.lr_scheduler)
        self.outputs = RunOutputs(self.plan, self.events, accelerator=self.accelerator, model=self.model, parking=self.parking,
                                  precision=self.precision, folder=self.run_folder(), sample_prompts=self.sample_prompts,
                                  started_at=self.started_at, session_id=self.session_id)

    def cache_latents(self) -> None:
        """The VAE on the device, and with a latent cache every image encoded now. The base model's
        VAE stays fp32 (SDXL's overflows in fp16: kohya's --no_half_vae); one given in `[model] vae`
        is taken to be fp16-safe (e.g. madebyollin/sdxl-vae-fp16-fix) and runs in the training
        precision."""
        import torch

        from engine.latents import LatentCache

        a = self.answers
        self.model.vae.to(self.device, dtype=self.weight_dtype if a.model.vae else torch.float32).requires_grad_(False).eval()
        cache_folder = a.output.dir / ".latent-cache" if a.training.cache_latents == "disk" else None
        self.latents = LatentCache(
            self.model, mode=a.training.latents, seed=a.training.seed, names=self.plan.dataset.image_names(),
            keep=a.training.cache_latents != "off", folder=cache_folder
        )
        self.latents.vae_in_use = lambda: self.parking.in_use("vae")
        if a.training.cache_latents != "off":
            self.cache_all_latents()

    def cache_captions(self) -> None:
        """The text encoders on the device; when their output can be cached, every caption encoded
        now, under the loop's autocast, so that the frozen text encoders can wait in host memory
        while the denoiser trains."""
        from engine.conditioning import CaptionConditioning

        for encoder in self.model.text_encoders:
            encoder.to(self.device, dtype=self.weight_dtype).requires_grad_(False)
        self.conditioning = CaptionConditioning(self.model, self.answers, self.parking)
        if self.conditioning.cacheable:
            with self.accelerator.autocast():
                self.conditioning.encode_ahead([e.caption for e in self.examples])

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
        for planned in self.schedule.walk(start):
            for batch in planned.batches:
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

    def batches(self, epoch: int) -> list[Batch]:
        return self.schedule.batches(epoch)

    def run(self, start: Position | None = None) -> TrainResult:
        start = start or Position(step=0, epoch=0, group=0)
        uncached = None if self.latents.keep else self.upcoming_latent_keys(start)
        with self.outputs.tensorboard(start.step), self.decoding_ahead(uncached):
            return self._run(start)

    def _run(self, start: Position) -> TrainResult:
        self.events.emit(Ready(device=str(self.device), precision=self.precision, total_steps=self.plan.total_steps, notes=self.notes,
                               cpu_threads=self.cpu_threads.threads if self.cpu_threads else None))
        if self.cadence.samples_before(start.step):
            self.outputs.sample(step=0, epoch=0)
        step = start.step
        for planned in self.schedule.walk(start):
            loss = self.optimizer_step(planned.batches)
            step = planned.step
            self.pending.append((step, planned.epoch, loss, self.lr_scheduler.get_last_lr()[0]))
            request = self.poll_controls() if self.cadence.polls(step) else None
            self.carry_out(self.cadence.after_step(step, epoch=planned.epoch, epoch_end=planned.epoch_end, request=request), planned)
        epoch = self.cadence.final_epoch(step)
        path = self.outputs.save(self.answers.lora_path, step=step, epoch=epoch)
        self.accelerator.wait_for_everyone()
        return TrainResult(lora_path=path, steps=step, epochs=epoch)

    def carry_out(self, actions: Actions, planned: PlannedStep) -> None:
        """Do what the cadence decided after a step, in its order."""
        a = self.answers
        step, epoch = planned.step, planned.epoch
        if actions.log:
            self.report()
        if actions.end_epoch:
            self.events.emit(EpochEnded(epoch=epoch, epochs=self.plan.epochs, step=step))
        if actions.sample:
            self.outputs.sample(step=step, epoch=epoch)
        if actions.save:
            # A resumed run may write an epoch file again: the same bytes, so it may replace it.
            epoch_file = a.output.dir / f"{a.output.name}-{epoch:06d}.safetensors"
            self.outputs.save(epoch_file, step=step, epoch=epoch, overwrite=a.output.overwrite or self.resumed)
        if actions.checkpoint:
            self.checkpoint(planned.after)
        if actions.stop:
            raise Interrupted(step, self.controls.reason)

    def optimizer_step(self, group: list[Batch]) -> torch.Tensor:
        """Forward and backward over the accumulated batches of one step, then update; the step's
        loss, still on the device."""
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
        return group_loss

    def report(self) -> None:
        """Read the pending losses back from the device and write their step events."""
        import torch

        pending, self.pending = self.pending, []
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
            self.events.emit(Step(step=step, total_steps=self.plan.total_steps, epoch=epoch, loss=value, lr=lr))

    # --- between steps -----------------------------------------------------------------------

    def checkpoint(self, position: Position) -> Path | None:
        if self.run_dir is None:
            return None
        path = self.state.write_checkpoint(self.run_dir, position, fingerprint=self.fingerprint,
                                           keep_last=self.answers.checkpoints.keep_last, before_commit=self.before_checkpoint_commit)
        if path is not None:
            self.events.emit(Checkpointed(path=str(path), step=position.step, epoch=position.epoch))
        return path

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
            events.emit(CheckpointSkipped(path=str(path), reason=reason))

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
        trainer.state.restore(checkpoint)
        trainer.resumed = True
        start = checkpoint.position
        events.emit(Resumed(step=start.step, epoch=start.epoch, checkpoint=str(checkpoint.path)))
    return trainer.run(start)
