"""The LightningModule that trains FractalGen with the reference's recipe.

AdamW (betas 0.9/0.95, weight decay except on biases and parameters with < 2 dims),
lr = ``optim.lr`` or ``base_lr * global_batch / 256``, linear warm-up then cosine decay
to ``min_lr`` stepped every iteration, gradient clipping (set on the Trainer), an
optional EMA of the weights, ``val_loss`` = validation NLL in bits per dimension, and
a grid of samples (class-conditional; unconditional when ``num_classes`` is 0) logged
to TensorBoard at every validation.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.utils.data import Sampler

from fractalgen.config import TrainConfig
from fractalgen.images import image_grid
from fractalgen.model import FractalGen, build_model

__all__ = [
    "FractalGenModule",
    "StepBatchSampler",
    "cosine_lr_factor",
    "image_grid",
    "no_weight_decay_names",
]


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Names of the parameters that AdamW must not decay.

    The reference's rule (``add_weight_decay`` in LTH14/fractalgen ``util/misc.py``):
    a parameter is not decayed iff it has fewer than two dimensions (biases, norm
    scales, 1-D tokens) or its name ends with ``bias`` (which also covers the 2-D
    ``pixel_head.logit_bias``). Everything else is decayed, embeddings, position
    embeddings and mask / class tokens included: there is no skip list.
    """
    return {
        name for name, param in model.named_parameters() if param.ndim < 2 or name.endswith("bias")
    }


def cosine_lr_factor(step: int, *, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Multiplier of the peak lr at optimizer step ``step`` (0-based).

    Linear warm-up over ``warmup_steps`` (the first step already gets ``1/warmup``),
    then half a cosine from 1 down to ``min_ratio`` at ``total_steps``.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if total_steps <= warmup_steps:
        return min_ratio
    progress = min((step - warmup_steps) / (total_steps - warmup_steps), 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class StepBatchSampler(Sampler[list[Any]]):
    """Endless batches whose content is a function of the global step only.

    The index stream is the concatenation of seeded permutations (epoch ``e`` uses
    ``seed + e``); step ``s`` on rank ``r`` takes positions
    ``[s*G + r*B, s*G + r*B + B)`` with ``G = B * world_size``. Iteration starts at
    ``start_step()``, read when iteration begins, so a resumed run sees exactly the
    batches an uninterrupted one would have. It never ends: ``max_steps`` stops the run.

    With ``flip`` each key is ``(index, mirrored)`` instead of ``index``: the mirror bit
    of a position is drawn with its epoch's permutation (probability 1/2), so random
    flips are a function of the step too, on every rank and in every worker.

    Args:
        size: number of items in the data set.
        batch_size: per-rank batch size.
        seed: base seed of the permutations.
        rank: this process's rank.
        world_size: number of ranks.
        start_step: returns the global step to start from.
        flip: yield ``(index, mirrored)`` keys (data sets of ``fractalgen.data`` take both).
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        start_step: Callable[[], int] = lambda: 0,
        flip: bool = False,
    ) -> None:
        if size <= 0:
            raise ValueError("StepBatchSampler needs a non-empty data set")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.size = size
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start_step = start_step
        self.flip = flip

    def _permutation(self, epoch: int) -> tuple[Tensor, Tensor | None]:
        generator = torch.Generator()
        generator.manual_seed(self.seed * 1_000_003 + epoch)
        perm = torch.randperm(self.size, generator=generator)
        mirror = torch.rand(self.size, generator=generator) < 0.5 if self.flip else None
        return perm, mirror

    def __iter__(self) -> Iterator[list[Any]]:
        step = int(self.start_step())
        global_batch = self.batch_size * self.world_size
        position = step * global_batch + self.rank * self.batch_size
        epoch = position // self.size
        perm, mirror = self._permutation(epoch)
        while True:
            batch: list[Any] = []
            pos = position
            while len(batch) < self.batch_size:
                e, offset = divmod(pos, self.size)
                if e != epoch:
                    epoch = e
                    perm, mirror = self._permutation(epoch)
                take = min(self.batch_size - len(batch), self.size - offset)
                indices = perm[offset : offset + take].tolist()
                if mirror is None:
                    batch.extend(indices)
                else:
                    bits = mirror[offset : offset + take].tolist()
                    batch.extend(zip(indices, bits, strict=True))
                pos += take
            yield batch
            position += global_batch


class FractalGenModule(pl.LightningModule):
    """FractalGen plus its optimiser, schedule, EMA, validation NLL and sample grids.

    Args:
        config: the complete training config as a plain dict (``TrainConfig`` shape);
            it is what the checkpoint stores as hyper-parameters, so checkpoints load
            with ``torch.load(..., weights_only=True)``.
        in_channels: image channels of the data.
        num_classes: number of class labels of the data.
    """

    #: Most images one ``model.sample`` call of the validation grid generates.
    SAMPLE_CHUNK = 64
    #: Images per validation NLL draw (see ``validation_step``).
    NLL_CHUNK = 8

    def __init__(self, config: Mapping[str, Any], in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.cfg = TrainConfig.model_validate(dict(config))
        plain = self.cfg.model_dump(mode="json")
        self.save_hyperparameters(
            {"config": plain, "in_channels": int(in_channels), "num_classes": int(num_classes)}
        )
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        self.model: FractalGen = build_model(
            self.cfg.model, in_channels=self.in_channels, num_classes=self.num_classes
        )
        self.ema: FractalGen | None = None
        if self.cfg.optim.ema_decay is not None:
            # Left in the same mode as the model (Lightning warns about modules in eval
            # mode at fit start); it never runs forward in training, and validation and
            # sampling switch it to eval.
            self.ema = copy.deepcopy(self.model)
            self.ema.requires_grad_(False)
        self._rng_to_restore: dict[str, Any] | None = None
        self.sample_dir: Path | None = None

    # -- the model used for evaluation -------------------------------------------

    @property
    def eval_model(self) -> FractalGen:
        """The EMA weights when an EMA is kept, else the trained weights."""
        return self.ema if self.ema is not None else self.model

    def forward(self, imgs: Tensor, labels: Tensor | None = None) -> Tensor:
        """Training loss in nats (see ``FractalGen.forward``)."""
        return self.model(imgs, labels)

    # -- steps -------------------------------------------------------------------

    def _labels(self, labels: Tensor) -> Tensor | None:
        """The batch's labels, or None for an unconditional model (``num_classes == 0``):
        its data set's labels are ignored and every image gets the null class."""
        return labels if self.num_classes > 0 else None

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """One optimisation step's loss; logs ``train/loss`` and ``lr``."""
        imgs, labels = batch
        loss: Tensor = self.model(imgs, self._labels(labels))
        self.log(
            "train/loss",
            loss,
            on_step=True,
            on_epoch=False,
            prog_bar=True,
            batch_size=imgs.shape[0],
        )
        self._log_lr()
        return loss

    def _log_lr(self) -> None:
        # Straight to the logger at Lightning's logging interval: a second self.log() per
        # step costs ~1 ms of Lightning bookkeeping (a few % of a small model's step).
        trainer = self.trainer
        every = max(1, int(trainer.log_every_n_steps))
        if self.logger is None or (self.global_step + 1) % every != 0:
            return
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        if optimizer is not None:
            self.logger.log_metrics(
                {"lr": float(optimizer.param_groups[0]["lr"])}, step=self.global_step
            )

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """Validation NLL in bits per dimension, averaged over the epoch as ``val_loss``."""
        imgs, _ = batch
        # The NLL estimate draws one masked-patch count per MAR level per call (the
        # reference's procedure). On one large batch that single draw dominates: on the
        # digits' 180 validation images it moved val_loss by +-0.15 bits between
        # validations. Chunks give independent draws with the same expectation.
        chunks = imgs.split(self.NLL_CHUNK)
        bpd: Tensor = sum(
            (self.eval_model.nll_bpd(c) * c.shape[0] for c in chunks), imgs.new_zeros(())
        ) / imgs.shape[0]
        self.log(
            "val_loss",
            bpd,
            on_step=False,
            on_epoch=True,
            prog_bar=True,
            sync_dist=True,
            batch_size=imgs.shape[0],
        )
        return bpd

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Move the EMA weights towards the trained ones."""
        if self.ema is None or self.cfg.optim.ema_decay is None:
            return
        weight = 1.0 - float(self.cfg.optim.ema_decay)
        with torch.no_grad():
            for ema_p, p in zip(self.ema.parameters(), self.model.parameters(), strict=True):
                ema_p.lerp_(p.detach(), weight)
            for ema_b, b in zip(self.ema.buffers(), self.model.buffers(), strict=True):
                ema_b.copy_(b)

    def on_validation_epoch_end(self) -> None:
        """Log the grid of ``sample_grid`` (global rank 0, not in the sanity check)."""
        trainer = self.trainer
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        grid = self.sample_grid()
        step = int(trainer.global_step)
        experiment = getattr(self.logger, "experiment", None) if self.logger is not None else None
        if experiment is not None and hasattr(experiment, "add_image"):
            experiment.add_image("samples", grid, step, dataformats="HWC")
        if self.sample_dir is not None:
            from PIL import Image

            self.sample_dir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(grid).save(self.sample_dir / f"samples_step_{step:08d}.png")

    @torch.no_grad()
    def sample_grid(self, num_images: int | None = None) -> np.ndarray:
        """Sample exactly ``num_images`` (default ``sampling.num_images``) into a uint8 HWC grid.

        Labels spread evenly over the classes: ``i % num_classes`` when there are at least
        as many images as classes (one column per class: the digits grid is rows of the
        ten digits), else ``num_images`` evenly spaced classes; an unconditional model
        (``num_classes == 0``) samples without labels.
        Sampling runs in chunks of at most ``SAMPLE_CHUNK`` images, with its own
        fixed-seed generator inside ``fork_rng`` so that it does not move the training
        RNG stream (resumed runs stay bitwise identical).
        """
        sampling = self.cfg.sampling
        num = max(1, int(num_images if num_images is not None else sampling.num_images))
        classes = self.num_classes
        labels: Tensor | None
        if classes == 0:
            labels, nrow = None, math.ceil(math.sqrt(num))
        elif num >= classes:
            labels = torch.arange(num, device=self.device) % classes
            nrow = classes
        else:
            labels = torch.arange(num, device=self.device) * classes // num
            nrow = math.ceil(math.sqrt(num))
        model = self.eval_model
        was_training = model.training
        model.eval()
        devices = [self.device] if self.device.type == "cuda" else []
        chunks: list[Tensor] = []
        with torch.random.fork_rng(devices=devices):
            generator = torch.Generator(device=self.device)
            generator.manual_seed(self.cfg.experiment.seed)
            for start in range(0, num, self.SAMPLE_CHUNK):
                stop = min(num, start + self.SAMPLE_CHUNK)
                part = labels[start:stop] if labels is not None else None
                chunks.append(
                    model.sample(
                        stop - start,
                        part,
                        num_iter_list=list(sampling.num_iter_list),
                        cfg=sampling.cfg,
                        cfg_schedule=sampling.cfg_schedule,
                        temperature=sampling.temperature,
                        generator=generator,
                        filter_threshold=float(sampling.filter_threshold),
                        **sampling.opening_overrides(conditional=part is not None),
                    ).cpu()
                )
        model.train(was_training)
        imgs = torch.cat(chunks)
        scale = max(1, 64 // max(1, imgs.shape[-1]))
        return image_grid(imgs.numpy(), nrow=nrow, scale=scale)

    # -- optimiser ---------------------------------------------------------------

    def peak_lr(self) -> float:
        """``optim.lr``, or ``base_lr * global_batch / 256`` with the trainer's world size."""
        optim = self.cfg.optim
        if optim.lr is not None:
            return float(optim.lr)
        world = 1
        accumulate = 1
        if self._trainer is not None:
            world = int(self.trainer.world_size)
            accumulate = int(self.trainer.accumulate_grad_batches)
        global_batch = self.cfg.data.train_batch_size * world * accumulate
        return float(optim.base_lr) * global_batch / 256.0

    def configure_optimizers(self) -> Any:
        """AdamW with decay / no-decay groups and a per-step warm-up + cosine schedule."""
        optim = self.cfg.optim
        skip = no_weight_decay_names(self.model)
        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        for name, param in self.model.named_parameters():
            if not param.requires_grad:
                continue
            (no_decay if name in skip else decay).append(param)
        lr = self.peak_lr()
        groups = [
            {"params": decay, "weight_decay": float(optim.weight_decay)},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        betas = (float(optim.betas[0]), float(optim.betas[1]))
        optimizer = torch.optim.AdamW(groups, lr=lr, betas=betas)
        total = int(self.cfg.trainer.max_steps)
        warmup = int(optim.warmup_steps)
        min_ratio = float(optim.min_lr) / lr if lr > 0 else 0.0

        def factor(step: int) -> float:
            return cosine_lr_factor(
                step, warmup_steps=warmup, total_steps=total, min_ratio=min_ratio
            )

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }

    # -- exact resume --------------------------------------------------------------

    #: Checkpoint key of every rank's RNG states (see ``on_save_checkpoint``).
    RNG_KEY = "fractalgen_rng"

    def _gather(self, state: Tensor) -> list[Tensor]:
        """Every rank's copy of ``state`` (a collective: every rank must call it)."""
        world = int(self.trainer.world_size) if self._trainer is not None else 1
        if world <= 1 or not torch.distributed.is_initialized():
            return [state]
        # NCCL gathers device tensors only; gloo takes either.
        gathered = self.trainer.strategy.all_gather(state.to(self.device))
        # Own storage per row: torch.set_rng_state crashes (SIGSEGV) on a view whose
        # storage offset is not 0, and a checkpoint would otherwise save rows as views.
        return [row.cpu().clone() for row in gathered]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store every rank's CPU and CUDA RNG states, so that a resume draws the same
        dropout, masks, orders and label drops on every rank as an uninterrupted run.

        Lightning builds the checkpoint on every rank and writes rank 0's, so the states
        are gathered here (a collective, like the barrier that follows each save).
        """
        cuda = self.device.type == "cuda"
        checkpoint[self.RNG_KEY] = {
            "world_size": int(self.trainer.world_size) if self._trainer is not None else 1,
            "cpu": self._gather(torch.get_rng_state()),
            "cuda": self._gather(torch.cuda.get_rng_state(self.device)) if cuda else [],
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the saved RNG states until training restarts."""
        saved = checkpoint.get(self.RNG_KEY)
        legacy = checkpoint.get("fractalgen_rng_state")  # rank 0's CPU state only
        if isinstance(saved, dict):
            self._rng_to_restore = saved
        elif isinstance(legacy, Tensor):
            self._rng_to_restore = {"world_size": 1, "cpu": [legacy], "cuda": []}
        else:
            self._rng_to_restore = None

    def on_train_start(self) -> None:
        """Split the RNG per rank at a fresh start (a resume restores each rank's own).

        Under DDP every rank starts from the same seed; like the reference (seed + rank),
        each rank then draws its own masks, orders, dropout and label drops. The per-rank
        seed comes from the shared stream, so a run stays reproducible for a given
        world size.
        """
        if self._rng_to_restore is None:
            self._split_rng_per_rank()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """At the first batch of a resumed run, put back this rank's saved RNG states.

        Here and not earlier: setting up the resumed run draws random numbers the
        uninterrupted run did not, and the run's adapter callback puts back rank 0's
        states at this hook (callbacks run before the module), which only suits rank 0.
        With the world size it was saved with, each rank gets its own states back
        (bitwise the uninterrupted run); with another, rank 0's state is re-split.
        """
        saved, self._rng_to_restore = self._rng_to_restore, None
        if saved is None:
            return
        world, rank = int(self.trainer.world_size), int(self.global_rank)
        cpu, cuda = list(saved.get("cpu") or []), list(saved.get("cuda") or [])
        if int(saved.get("world_size", 1)) == world and len(cpu) == world:
            torch.set_rng_state(cpu[rank].clone())
            if self.device.type == "cuda" and len(cuda) == world:
                torch.cuda.set_rng_state(cuda[rank].clone(), self.device)
            return
        if cpu:
            torch.set_rng_state(cpu[0].clone())
        self._split_rng_per_rank()

    def _split_rng_per_rank(self) -> None:
        if self.trainer.world_size > 1:
            base = int(torch.randint(0, 2**62, (1,)).item())  # same on every rank
            torch.manual_seed((base + 1_000_003 * self.global_rank) % 2**63)
