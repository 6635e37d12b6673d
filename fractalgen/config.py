"""The training config of fractalgen (``TrainConfig``) and its command line.

The defaults train a small FractalMAR on the bundled scikit-learn digits on a CPU, so
``python main.py --max_steps 100`` works with no config file. Every field can be set in
a YAML file (``--config FILE``) or with a flag (``--trainer.max_steps 100`` or, when the
name is unique, ``--max_steps 100``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, NonNegativeInt, PositiveInt, field_validator, model_validator

from fractalgen.limits import (
    MAX_BATCH,
    MAX_GRID_IMAGES,
    MAX_NAME_LENGTH,
    MAX_STEPS,
    SEED_LIMIT,
    WHY_STEPS,
    WORKERS_PER_CPU,
    at_most,
    cpu_count,
    estimate_parameters,
    host_memory_bytes,
    max_workers,
)
from versionkit.config import (
    ConfigModel,
    ConfigSection,
    ControlFlag,
    FieldError,
    LoadedConfig,
    load_config,
)

__all__ = [
    "CONTROLS",
    "DataConfig",
    "ExperimentConfig",
    "ModelConfig",
    "OptimConfig",
    "SamplingConfig",
    "TrainConfig",
    "TrainerConfig",
    "parse_train_args",
]

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*\Z")

class ExperimentConfig(ConfigSection):
    """Where a run's versions, checkpoints and logs go."""

    name: str = Field(
        "fractalgen",
        description="Experiment folder name under output_root (a plain name: letters, "
        "digits, '_', '-', '.', '+'; no '/' or '..').",
    )
    output_root: Path = Field(
        Path("outputs"),
        description="Folder that holds every experiment: output_root/name/{checkpoints,logs}.",
    )
    seed: NonNegativeInt = Field(0, description="Random seed for data split, init and training.")
    registry: str | None = Field(
        None,
        description="Version registry backend URI (file, memory, sqlite:///x.db, "
        "postgresql://...); null: $VERSIONKIT_BACKEND, else the file backend.",
    )

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if value in (".", "..") or not _NAME.match(value):
            raise ValueError(
                "expected a plain folder name (letters, digits, '_', '-', '.', '+'; "
                "no '/', '\\', spaces or '..')"
            )
        if len(value) > MAX_NAME_LENGTH:
            raise ValueError(
                f"expected a name of at most {MAX_NAME_LENGTH} characters, not {len(value)} "
                "(it is a folder name; file systems allow 255 bytes per name)"
            )
        return value

    @field_validator("seed")
    @classmethod
    def _seed_bits(cls, value: int) -> int:
        return at_most(value, SEED_LIMIT - 1, "seeds are in [0, 2**32): random generators "
                        "take 32-bit seeds")


class DataConfig(ConfigSection):
    """The data set and its loaders."""

    dataset: Literal["digits", "folder"] = Field(
        "digits",
        description="digits: scikit-learn's bundled 8x8 digits (no download); folder: an "
        "image folder at data.path (one sub-folder per class).",
    )
    path: Path | None = Field(None, description="Image folder root; required for 'folder'.")
    channels: Literal[1, 3] = Field(1, description="Image channels: 1 (gray) or 3 (RGB).")
    num_classes: NonNegativeInt = Field(
        10,
        description="Number of class labels; 0 = unconditional only (every label is the "
        "null class).",
    )
    val_fraction: float = Field(
        0.1, gt=0.0, lt=1.0, description="Fraction of the data held out for validation."
    )
    train_batch_size: PositiveInt = Field(64, description="Training batch size per device.")
    val_batch_size: PositiveInt = Field(256, description="Validation batch size per device.")
    num_workers: NonNegativeInt = Field(0, description="DataLoader worker processes.")
    random_flip: bool = Field(
        False,
        description="Mirror each training image left-right with probability 1/2 (the "
        "reference's ImageNet augmentation; validation images are never flipped). Off for "
        "the digits: a mirrored digit is not a digit.",
    )

    @field_validator("num_workers")
    @classmethod
    def _workers(cls, value: int) -> int:
        return at_most(value, max_workers(), f"{WORKERS_PER_CPU} per CPU on this machine, "
                        f"which has {cpu_count()}, and at least 32: each worker is a process "
                        "holding a copy of the data set")

    @field_validator("train_batch_size", "val_batch_size")
    @classmethod
    def _batch(cls, value: int) -> int:
        return at_most(value, MAX_BATCH, "a batch of more images than that does not fit "
                        "on one device")

    @field_validator("num_classes")
    @classmethod
    def _classes(cls, value: int) -> int:
        return at_most(value, 1_000_000, "each class is an embedding row on every "
                        "level")

    @model_validator(mode="after")
    def _path_for_folder(self) -> DataConfig:
        if self.dataset == "folder" and self.path is None:
            raise FieldError("dataset 'folder' needs data.path, the image folder", "path",
                             "dataset")
        return self


class ModelConfig(ConfigSection):
    """The fractal of generators; one entry per level (the last level is the pixel head)."""

    img_size_list: list[PositiveInt] = Field(
        [8, 2, 1],
        description="Patch size per level, from the whole image down to 1 pixel; each "
        "divides the one before.",
    )
    embed_dim_list: list[PositiveInt] = Field([64, 32, 16], description="Width per level.")
    num_blocks_list: list[PositiveInt] = Field(
        [2, 1, 1], description="Transformer blocks per level."
    )
    num_heads_list: list[PositiveInt] = Field(
        [4, 2, 2], description="Attention heads per level; each divides that level's width."
    )
    generator_type_list: list[Literal["ar", "mar"]] = Field(
        ["mar", "mar"],
        description="Generator per level above the pixel head: ar (causal) or mar (masked).",
    )
    num_conds: PositiveInt | None = Field(
        None, description="Condition tokens per MAR level; null: 1 for ar, 5 for mar."
    )
    ar_order: Literal["raster", "center"] = Field(
        "raster",
        description="Order in which AR levels generate their patches: raster (the "
        "reference's, row by row) or center (nearest the centre first, ties in raster "
        "order; the first patches are then the ones that tell digits apart).",
    )
    guiding_pixel: bool = Field(
        False, description="Predict each patch's mean colour first (levels above 0)."
    )
    label_drop_prob: float = Field(
        0.1, ge=0.0, le=1.0, description="Probability of replacing a label by the null class."
    )
    attn_dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Attention dropout.")
    proj_dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Projection dropout.")
    r_weight: float = Field(
        5.0, gt=0.0, description="Training loss weight of the first channel in the pixel head."
    )
    grad_checkpointing: bool = Field(False, description="Trade compute for memory.")

    @field_validator("img_size_list")
    @classmethod
    def _image_size(cls, value: list[int]) -> list[int]:
        return at_most(value, 4096, "images above 4096 pixels a side do not fit in "
                        "memory")

    @field_validator("embed_dim_list")
    @classmethod
    def _width(cls, value: list[int]) -> list[int]:
        return at_most(value, 65536, "a wider transformer does not fit in "
                        "memory")

    @field_validator("num_blocks_list", "num_heads_list", "num_conds")
    @classmethod
    def _depth(cls, value: Any) -> Any:
        return at_most(value, 4096, "more than that is a typo")

    @model_validator(mode="after")
    def _fits_in_memory(self) -> ModelConfig:
        params = estimate_parameters(self.embed_dim_list, self.num_blocks_list)
        memory = host_memory_bytes()
        if memory is not None and 4 * params > memory:
            raise FieldError(
                f"the model has at least {params:.3g} parameters ({4 * params / 2**30:.3g} "
                f"GiB in float32, estimated from embed_dim_list {self.embed_dim_list} and "
                f"num_blocks_list {self.num_blocks_list}), more than this machine's "
                f"{memory / 2**30:.3g} GiB of memory; the model could not even be built",
                "embed_dim_list",
                "num_blocks_list",
            )
        return self

    @model_validator(mode="after")
    def _levels_agree(self) -> ModelConfig:
        sizes = self.img_size_list
        levels = len(sizes)
        if levels < 2:
            raise FieldError(
                f"img_size_list needs at least 2 levels (image size ... 1), given {sizes}",
                "img_size_list",
            )
        if sizes[-1] != 1:
            raise FieldError(
                f"img_size_list must end with 1 (single pixels), given {sizes}", "img_size_list"
            )
        for i in range(levels - 1):
            if sizes[i + 1] >= sizes[i] or sizes[i] % sizes[i + 1]:
                raise FieldError(
                    f"img_size_list[{i + 1}]={sizes[i + 1]} must be smaller than and divide "
                    f"img_size_list[{i}]={sizes[i]}, given {sizes}",
                    "img_size_list",
                )
        for name in ("embed_dim_list", "num_blocks_list", "num_heads_list"):
            values = getattr(self, name)
            if len(values) != levels:
                raise FieldError(
                    f"{name} needs one entry per level of img_size_list ({levels}), "
                    f"given {len(values)}: {values}",
                    name,
                    "img_size_list",
                )
        if len(self.generator_type_list) != levels - 1:
            raise FieldError(
                f"generator_type_list needs one entry per level above the pixel head "
                f"({levels - 1}), given {len(self.generator_type_list)}: "
                f"{self.generator_type_list}",
                "generator_type_list",
                "img_size_list",
            )
        pairs = zip(self.embed_dim_list, self.num_heads_list, strict=True)
        for i, (dim, heads) in enumerate(pairs):
            if dim % heads:
                raise FieldError(
                    f"num_heads_list[{i}]={heads} must divide embed_dim_list[{i}]={dim}",
                    "num_heads_list",
                    "embed_dim_list",
                )
            if i < levels - 1 and self.generator_type_list[i] == "ar" and (dim // heads) % 4:
                raise FieldError(
                    f"AR level {i}: the head width embed_dim_list[{i}] / num_heads_list[{i}] "
                    f"= {dim // heads} must be a multiple of 4 for the 2D rotary embedding",
                    "num_heads_list",
                    "embed_dim_list",
                )
        if self.ar_order != "raster" and "ar" not in self.generator_type_list:
            raise FieldError(
                f"ar_order {self.ar_order!r} orders the patches of AR levels, but "
                f"generator_type_list has none: {self.generator_type_list} (MAR levels "
                "draw a random order); set an 'ar' level or leave ar_order raster",
                "ar_order",
                "generator_type_list",
            )
        return self


class OptimConfig(ConfigSection):
    """AdamW with linear warm-up then cosine decay, stepped every iteration."""

    lr: float | None = Field(
        1e-3,
        gt=0.0,
        description="Peak learning rate (1e-3 suits the small digits model); null: the "
        "paper's rule base_lr * global_batch / 256.",
    )
    base_lr: float = Field(5e-5, gt=0.0, description="Learning rate per 256 images.")
    weight_decay: float = Field(
        0.05, ge=0.0, description="AdamW weight decay (not on biases and 1-D parameters)."
    )
    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW betas.")
    warmup_steps: NonNegativeInt = Field(100, description="Linear warm-up steps.")
    min_lr: float = Field(0.0, ge=0.0, description="Learning rate at the end of the cosine.")
    grad_clip: float | None = Field(
        3.0, gt=0.0, description="Gradient norm clip; null: no clipping."
    )
    ema_decay: float | None = Field(
        None, gt=0.0, lt=1.0, description="EMA of the weights (e.g. 0.9999); null: no EMA."
    )

    @field_validator("warmup_steps")
    @classmethod
    def _steps(cls, value: int) -> int:
        return at_most(value, MAX_STEPS, WHY_STEPS)

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in value):
            raise ValueError("expected two numbers in [0, 1)")
        return value


class TrainerConfig(ConfigSection):
    """The Lightning Trainer's schedule and hardware."""

    max_steps: PositiveInt = Field(3000, description="Training steps (optimizer updates).")
    val_every_n_steps: PositiveInt = Field(
        500, description="Validate (and checkpoint) every N steps, and at the last step."
    )
    save_top_k: int = Field(
        3, ge=-1, description="Keep the k best checkpoints by val_loss (-1: all) plus last.ckpt."
    )
    log_every_n_steps: PositiveInt = Field(10, description="Log training scalars every N steps.")
    accelerator: str = Field("auto", description="Lightning accelerator: auto, cpu, gpu, mps.")
    devices: int | str = Field(
        1, description="Devices per node: a count, -1 (all), 'auto' or a list like '0,1'."
    )
    num_nodes: PositiveInt = Field(1, description="Machines (multi-node DDP).")
    strategy: str = Field("auto", description="Lightning strategy: auto, ddp, ddp_spawn, ...")
    precision: Literal["64-true", "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true"] = (
        Field("32-true", description="Lightning precision.")
    )
    limit_val_batches: int | float | None = Field(
        None,
        ge=0,
        description="Validation batches per check: a count (int) or fraction (float); "
        "null: all.",
    )
    cpu_threads: PositiveInt | None = Field(
        None,
        le=4096,
        description="CPU threads per process for PyTorch's operators, at most as many as "
        "the process has (OMP_NUM_THREADS, or a sweep worker's share); null: leave them "
        "(PyTorch: one per core). Small models train fastest on 1, their operators being "
        "too small to split (train_small: 18 steps/s on 1 thread, 9 on 2).",
    )

    @field_validator("devices")
    @classmethod
    def _devices(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1 and value != -1:
            raise ValueError("expected a positive count, -1 (all), 'auto' or '0,1'")
        return at_most(value, 4096, "devices per node")

    @field_validator("max_steps", "val_every_n_steps", "log_every_n_steps")
    @classmethod
    def _steps(cls, value: int) -> int:
        return at_most(value, MAX_STEPS, WHY_STEPS)

    @field_validator("save_top_k")
    @classmethod
    def _kept(cls, value: int) -> int:
        return at_most(value, 10_000, "each kept checkpoint is a file on "
                        "disk")

    @field_validator("num_nodes")
    @classmethod
    def _nodes(cls, value: int) -> int:
        return at_most(value, 100_000, "machines in one run")

    @field_validator("limit_val_batches")
    @classmethod
    def _fraction(cls, value: int | float | None) -> int | float | None:
        if isinstance(value, float) and value > 1.0:
            raise ValueError("a fraction must be at most 1.0 (use an int for a batch count)")
        return at_most(value, MAX_STEPS, "batches per validation")


class SamplingConfig(ConfigSection):
    """Sampling for the validation image grid (inference.py takes its own flags)."""

    num_iter_list: list[PositiveInt] = Field(
        [4, 4], description="Sampling steps per generator level (one per level above pixels)."
    )
    cfg: float = Field(1.0, ge=0.0, description="Classifier-free guidance scale; 1.0: none.")
    cfg_schedule: Literal["linear", "constant"] = Field(
        "linear", description="Guidance schedule at the top level."
    )
    temperature: float = Field(
        1.0, gt=0.0, description="Divides the pixel logits (lower: sharper samples)."
    )
    opening_steps: int = Field(
        0,
        ge=0,
        le=65536,
        description="Unconditional samples: the top level's first this many steps (AR: "
        "patches in model.ar_order; MAR: unmasking steps) sample at opening_temperature "
        "instead of temperature. Without a class the first patches decide which digit or "
        "object is drawn, so a higher temperature there keeps every mode and a lower one "
        "after it keeps strokes sharp. A class-conditional sample has its class to decide "
        "that, and never opens. 0: never (the reference).",
    )
    opening_temperature: float = Field(
        1.0,
        gt=0.0,
        description="Temperature of an unconditional sample's first opening_steps steps.",
    )
    filter_threshold: float = Field(
        1e-4,
        ge=0.0,
        lt=1.0,
        description="Guidance filter: a pixel value whose class-conditional probability is "
        "below this cannot be boosted by guidance (its unconditional logit is raised to "
        "match). The reference uses 1e-4 in every evaluation; 0 turns it off. Only used "
        "with cfg != 1.",
    )
    num_images: PositiveInt = Field(16, description="Images in the validation grid.")

    def opening_overrides(
        self,
        steps: int | None = None,
        temperature: float | None = None,
        *,
        conditional: bool = False,
    ) -> dict[str, Any]:
        """``FractalGen.sample``'s opening keywords: these, else the section's values; for
        ``conditional`` samples (with class labels) none, since their class decides what
        is drawn (measured: opening them only costs cfg-3 accuracy, 0.98 -> 0.97)."""
        if conditional:
            return {"opening_steps": 0, "opening_temperature": 1.0}
        return {
            "opening_steps": int(self.opening_steps if steps is None else steps),
            "opening_temperature": float(
                self.opening_temperature if temperature is None else temperature
            ),
        }

    @field_validator("num_images")
    @classmethod
    def _grid(cls, value: int) -> int:
        return at_most(value, MAX_GRID_IMAGES, "the validation grid is one image; sample "
                        "more with inference.py")

    @field_validator("num_iter_list")
    @classmethod
    def _iters(cls, value: list[int]) -> list[int]:
        return at_most(value, 65536, "sampling steps per level; more than the patches "
                        "of a 4096-pixel image do nothing")


class TrainConfig(ConfigModel):
    """Everything a fractalgen training run needs; saved as config.yaml with each version."""

    SCHEMA_VERSION = 1

    experiment: ExperimentConfig = Field(default_factory=ExperimentConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)

    @model_validator(mode="after")
    def _across_sections(self) -> TrainConfig:
        levels = len(self.model.img_size_list)
        if len(self.sampling.num_iter_list) != levels - 1:
            raise FieldError(
                f"sampling.num_iter_list needs one entry per generator level "
                f"({levels - 1}, from model.img_size_list {self.model.img_size_list}), "
                f"given {len(self.sampling.num_iter_list)}: {self.sampling.num_iter_list}",
                "sampling.num_iter_list",
                "model.img_size_list",
            )
        return self


CONTROLS: tuple[ControlFlag, ...] = (
    ControlFlag(
        "print_config",
        "Print the resolved config as YAML and exit.",
        takes_value=False,
        default=False,
    ),
    ControlFlag(
        "resume",
        "Continue a run in the same version: a .ckpt file, a version folder, an experiment "
        "root, 'latest', or ROOT@N|latest|best|TAG. Its saved config.yaml is used; only "
        "the step budget, cadence, hardware, workers and sampling may change.",
        takes_value=True,
        default=None,
    ),
)

_DESCRIPTION = (
    "Train FractalGen with PyTorch Lightning. Each run gets a new version_N under "
    "experiment.output_root/experiment.name, with its checkpoints, TensorBoard logs and "
    "resolved config.yaml."
)


def parse_train_args(
    argv: Sequence[str] | None = None,
    *,
    resolve_resume_config: Callable[[str], Path | None] | None = None,
    prog: str = "main.py",
) -> LoadedConfig[TrainConfig]:
    """Parse the trainer's command line into a validated :class:`TrainConfig`.

    Args:
        argv: the arguments (default ``sys.argv[1:]``).
        resolve_resume_config: maps a ``--resume`` target to its saved config.yaml; when
            ``--resume`` is given without ``--config``, that file is the config file.
        prog: program name shown by ``--help``.

    Returns:
        The config, its file and text, the override flags, and the controls
        ``print_config`` (bool) and ``resume`` (str or None).

    Raises:
        versionkit.errors.ConfigError: any mistake in the flags, file or values.
        SystemExit: after printing ``--help``.
    """

    def default_file(controls: dict[str, Any]) -> Path | None:
        target = controls.get("resume")
        if target is None or resolve_resume_config is None:
            return None
        return resolve_resume_config(str(target))

    return load_config(
        TrainConfig,
        argv,
        prog=prog,
        description=_DESCRIPTION,
        controls=CONTROLS,
        default_config_file=default_file,
    )
