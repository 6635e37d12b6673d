"""FractalGen: a recursion of AR/MAR generators down to a per-pixel head.

Level ``i`` models a ``img_size_list[i]`` square image as a grid of
``(img_size_list[i] / img_size_list[i + 1])²`` patches and hands each patch, with its
conditions, to level ``i + 1``; the last level is the :class:`PixelHead`. Level 0 holds
the class embedding and a learned null class (the reference's "fake latent").
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from pydantic import ValidationError
from torch import Tensor, nn

from fractalgen.config import ModelConfig
from fractalgen.model import sampling
from fractalgen.model.ar import ARLevel
from fractalgen.model.mar import MARLevel
from fractalgen.model.pixel import PixelHead
from versionkit.errors import ConfigError

__all__ = [
    "FractalGen",
    "ModelError",
    "build_model",
    "fractalar_in64",
    "fractalmar_base_in256",
    "fractalmar_huge_in256",
    "fractalmar_in64",
    "fractalmar_large_in256",
    "model_settings",
]


class ModelError(ConfigError):
    """A model built or called with bad settings (a ``ValueError``; CLIs exit 2)."""


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ModelError(message)


class FractalGen(nn.Module):
    """Fractal generative model over images with any channel count and class count.

    Inputs are float images in [0, 1]; each pixel channel is modelled as an 8-bit value.
    ``num_classes=0`` makes an unconditional model (only the null class exists).
    """

    def __init__(
        self,
        settings: ModelConfig | Mapping[str, Any] | None = None,
        *,
        in_channels: int = 3,
        num_classes: int = 1000,
        **fields: Any,
    ) -> None:
        """Build the levels.

        The model's settings are defined, documented and validated in one place,
        :class:`fractalgen.config.ModelConfig` (the ``model`` section of the training
        config): ``img_size_list``, ``embed_dim_list``, ``num_blocks_list``,
        ``num_heads_list``, ``generator_type_list``, ``num_conds``, ``ar_order``,
        ``guiding_pixel``, ``label_drop_prob``, ``attn_dropout``, ``proj_dropout``, ``r_weight`` and
        ``grad_checkpointing``. Pass them as a validated ``ModelConfig`` (used as is), a
        mapping, or keywords (each overrides the mapping); a setting left out takes
        ``ModelConfig``'s default.

        Args:
            settings: The model settings (a ``ModelConfig`` or a mapping of its fields).
            in_channels: Image channels (1 grayscale, 3 RGB, any count works).
            num_classes: Number of classes; 0 for an unconditional model.
            **fields: Model settings by name (see above).

        Raises:
            ModelError: (a ``ValueError``) on an unknown or invalid setting; the message
                names the setting and what was expected.
        """
        super().__init__()
        cfg = model_settings(settings, **fields)
        _check(in_channels >= 1, f"in_channels must be >= 1, got {in_channels}")
        _check(num_classes >= 0, f"num_classes must be >= 0 (0 = unconditional), got {num_classes}")
        sizes = list(cfg.img_size_list)
        types = list(cfg.generator_type_list)
        dims = list(cfg.embed_dim_list)
        heads = list(cfg.num_heads_list)
        blocks = list(cfg.num_blocks_list)
        n_levels = len(sizes) - 1
        label_drop_prob, attn_dropout = cfg.label_drop_prob, cfg.attn_dropout
        proj_dropout, num_conds = cfg.proj_dropout, cfg.num_conds
        guiding_pixel, r_weight = cfg.guiding_pixel, cfg.r_weight
        grad_checkpointing = cfg.grad_checkpointing
        self.settings = cfg
        self.img_size_list = tuple(sizes)
        self.generator_type_list = tuple(types)
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.label_drop_prob = label_drop_prob
        self.num_conds = num_conds
        self.config: dict[str, Any] = {
            **cfg.model_dump(), "in_channels": in_channels, "num_classes": num_classes
        }

        self.class_emb = nn.Embedding(num_classes, dims[0]) if num_classes > 0 else None
        self.fake_latent = nn.Parameter(torch.zeros(1, dims[0]))
        if self.class_emb is not None:
            nn.init.normal_(self.class_emb.weight, std=0.02)
        nn.init.normal_(self.fake_latent, std=0.02)

        levels: list[nn.Module] = []
        for i in range(n_levels):
            common: dict[str, Any] = {
                "seq_len": (sizes[i] // sizes[i + 1]) ** 2,
                "patch_size": sizes[i + 1],
                "in_channels": in_channels,
                "cond_dim": dims[i - 1] if i > 0 else dims[0],
                "embed_dim": dims[i],
                "num_blocks": blocks[i],
                "num_heads": heads[i],
                "grad_checkpointing": grad_checkpointing,
            }
            if types[i] == "ar":
                levels.append(ARLevel(dropout=proj_dropout, order=cfg.ar_order, **common))
            else:
                levels.append(
                    MARLevel(
                        attn_dropout=attn_dropout,
                        proj_dropout=proj_dropout,
                        num_conds=5 if num_conds is None else num_conds,
                        guiding_pixel=guiding_pixel and i > 0,
                        **common,
                    )
                )
        self.levels = nn.ModuleList(levels)
        self.pixel_head = PixelHead(
            cond_dim=dims[-2],
            width=dims[-1],
            depth=blocks[-1],
            num_heads=heads[-1],
            in_channels=in_channels,
            r_weight=r_weight,
        )
        first = self.levels[0]
        self._top_conds = first.num_conds if isinstance(first, MARLevel) else 1

    # ------------------------------------------------------------------ helpers

    def _check_generator(self, generator: torch.Generator | None) -> None:
        dev = self.fake_latent.device
        if generator is not None and generator.device.type != dev.type:
            raise ModelError(
                f"generator is on {generator.device} but the model is on {dev}; create it "
                f"with torch.Generator(device={str(dev)!r}).manual_seed(seed)"
            )

    def _check_images(self, imgs: Tensor) -> None:
        size = self.img_size_list[0]
        expected = (self.in_channels, size, size)
        if imgs.dim() != 4 or tuple(imgs.shape[1:]) != expected:
            raise ModelError(
                f"FractalGen expects images of shape (B, {expected[0]}, {expected[1]}, "
                f"{expected[2]}) with values in [0, 1], got shape {tuple(imgs.shape)}"
            )
        if not imgs.is_floating_point():
            raise ModelError(f"FractalGen expects float images in [0, 1], got dtype {imgs.dtype}")

    def _class_cond(
        self, labels: Tensor | None, batch: int, *, drop: bool, generator: torch.Generator | None
    ) -> Tensor:
        """Level-0 condition vectors (batch, d0): class embedding or the null class."""
        null = self.fake_latent.expand(batch, -1)
        if labels is None:
            return null
        if self.class_emb is None:
            raise ModelError(
                "this model is unconditional (num_classes=0): pass labels=None, not labels"
            )
        emb: Tensor = self.class_emb(labels)
        if drop and self.label_drop_prob > 0:
            u = torch.rand(batch, device=emb.device, generator=generator)
            emb = torch.where((u < self.label_drop_prob).unsqueeze(1), null.to(emb.dtype), emb)
        return emb

    def _loss(self, imgs: Tensor, cond0: Tensor, generator: torch.Generator | None) -> Tensor:
        cond = cond0.unsqueeze(1).expand(-1, self._top_conds, -1)
        x = imgs
        aux: list[Tensor] = []
        for level, k in zip(self.levels, sampling.conds_handed_down(self.levels), strict=True):
            x, cond, extra = level(x, cond, generator, out_conds=k)
            if extra is not None:
                aux.append(extra)
        loss: Tensor = self.pixel_head(x.reshape(x.shape[0], self.in_channels), cond, generator)
        for extra in aux:
            loss = loss + extra
        return loss

    # ------------------------------------------------------------------ public API

    def forward(self, imgs: Tensor, labels: Tensor | None = None) -> Tensor:
        """Loss in nats per dimension (scalar).

        Training mode: labels are replaced by the null class with ``label_drop_prob``,
        MAR levels mask a truncated-normal ratio, and the pixel loss weights the first
        channel by ``r_weight``. Evaluation mode: labels are used as given, MAR levels mask
        a uniform count, and the pixel loss is the plain channel mean.

        Args:
            imgs: Float images (B, C, H, W) in [0, 1].
            labels: Long class labels (B,), or None for the null class.

        Returns:
            Scalar loss (plus the guiding-pixel losses when enabled).
        """
        self._check_images(imgs)
        if labels is not None and tuple(labels.shape) != (imgs.shape[0],):
            raise ModelError(
                f"labels must have shape ({imgs.shape[0]},) to match the images, "
                f"got {tuple(labels.shape)}"
            )
        cond0 = self._class_cond(labels, imgs.shape[0], drop=self.training, generator=None)
        return self._loss(imgs, cond0, None)

    def nll_bpd(self, imgs: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """Validation negative log-likelihood in bits per dimension (scalar).

        Follows the reference's evaluation: evaluation mode, null class, plain channel mean,
        and for MAR levels a uniformly drawn number of masked patches in a random order
        (an unbiased one-sample estimate of the any-order likelihood). That estimate is
        random; pass ``generator`` (on the model's device) for a reproducible value.

        Args:
            imgs: Float images (B, C, H, W) in [0, 1].
            generator: Optional RNG for the masks, orders and rounding noise.

        Returns:
            Scalar mean NLL in bits per dimension.
        """
        self._check_images(imgs)
        self._check_generator(generator)
        was_training = self.training
        self.eval()
        try:
            cond0 = self._class_cond(None, imgs.shape[0], drop=False, generator=None)
            loss = self._loss(imgs, cond0, generator)
        finally:
            self.train(was_training)
        return loss / math.log(2)

    @torch.no_grad()
    def sample(
        self,
        batch_size: int,
        labels: Tensor | None = None,
        *,
        num_iter_list: Sequence[int],
        cfg: float = 1.0,
        cfg_schedule: str = "linear",
        temperature: float = 1.0,
        filter_threshold: float = 1e-4,
        generator: torch.Generator | None = None,
        opening_steps: int = 0,
        opening_temperature: float = 1.0,
    ) -> Tensor:
        """Generate images (runs in evaluation mode; the module's mode is restored).

        Args:
            batch_size: Number of images.
            labels: Long class labels (batch_size,), or None for unconditional samples.
            num_iter_list: Steps per level (MAR: unmasking steps; AR levels always take one
                step per patch), one entry per level above the pixel head.
            cfg: Classifier-free guidance scale; 1 disables it. Guidance doubles the batch
                (class, null class) and mixes pixel logits as ``uncond + cfg·(cond − uncond)``.
                Ignored without labels.
            cfg_schedule: ``"linear"`` (guidance ramps up over the top level's steps) or
                ``"constant"``.
            temperature: Sampling temperature; pixel logits are DIVIDED by it (the
                reference multiplies), so < 1 is sharper and > 1 more diverse.
            filter_threshold: With guidance, pixel values whose class-conditional
                probability is below this are not boosted by guidance (the reference's
                filter; its evaluation commands use 1e-4, the default). 0 disables it; it
                must lie in [0, 1].
            generator: Optional RNG on the model's device, for reproducible samples.
            opening_steps: The top level's first this many steps (AR: patches in the
                level's order; MAR: unmasking steps) sample their pixels at ``opening_temperature``
                instead of ``temperature``. 0 (the default, and the reference) never.
            opening_temperature: See ``opening_steps``; must be > 0.

        Returns:
            uint8 images (batch_size, C, H, W) with values 0..255.
        """
        iters = sampling.check_sample_args(
            len(self.levels),
            batch_size,
            num_iter_list,
            cfg_schedule,
            temperature,
            filter_threshold,
            opening_steps,
            opening_temperature,
        )
        self._check_generator(generator)
        if labels is not None:
            labels = sampling.check_labels(
                labels, batch_size, self.num_classes, self.fake_latent.device
            )
        guided = labels is not None and cfg != 1.0
        cond0 = self._class_cond(labels, batch_size, drop=False, generator=None)
        if guided:
            cond0 = torch.cat([cond0, self.fake_latent.expand(batch_size, -1)], dim=0)
        plan = sampling.SamplingPlan(
            iters=iters,
            out_conds=sampling.conds_handed_down(self.levels),
            cfg_schedule=cfg_schedule,
            guided=guided,
            temperature=temperature,
            filter_threshold=filter_threshold,
            generator=generator,
            opening_steps=opening_steps,
            opening_temperature=opening_temperature,
        )
        was_training = self.training
        self.eval()
        try:
            # Inference mode: less bookkeeping per op, and sampling is thousands of tiny ops.
            with torch.inference_mode():
                cond = cond0.unsqueeze(1).expand(-1, self._top_conds, -1)
                imgs = sampling.run_levels(list(self.levels), self.pixel_head, plan)(
                    cond, float(cfg), float(temperature)
                )
                out = (imgs.float() * 255).round().clamp(0, 255).to(torch.uint8)
        finally:
            self.train(was_training)
        return out.clone()  # an ordinary tensor: callers may change it in place


# ---------------------------------------------------------------------- factories


def fractalar_in64(**kwargs: Any) -> FractalGen:
    """FractalAR for ImageNet 64 (AR levels (64, 4, 1); 3 channels, 1000 classes)."""
    return FractalGen(
        img_size_list=(64, 4, 1),
        embed_dim_list=(1024, 512, 128),
        num_blocks_list=(32, 8, 3),
        num_heads_list=(16, 8, 4),
        generator_type_list=("ar", "ar"),
        **kwargs,
    )


def fractalmar_in64(**kwargs: Any) -> FractalGen:
    """FractalMAR for ImageNet 64 (MAR levels (64, 4, 1), 5 conditions): 432.00M params."""
    return FractalGen(
        img_size_list=(64, 4, 1),
        embed_dim_list=(1024, 512, 128),
        num_blocks_list=(32, 8, 3),
        num_heads_list=(16, 8, 4),
        generator_type_list=("mar", "mar"),
        **kwargs,
    )


def _in256(
    dims: tuple[int, ...], blocks: tuple[int, ...], heads: tuple[int, ...], kwargs: dict[str, Any]
) -> FractalGen:
    kwargs.setdefault("guiding_pixel", True)
    return FractalGen(
        img_size_list=(256, 16, 4, 1),
        embed_dim_list=dims,
        num_blocks_list=blocks,
        num_heads_list=heads,
        generator_type_list=("mar", "mar", "mar"),
        **kwargs,
    )


def fractalmar_base_in256(**kwargs: Any) -> FractalGen:
    """FractalMAR-B for ImageNet 256 (guiding pixel on): 186.30M params."""
    return _in256((768, 384, 192, 64), (24, 6, 3, 1), (12, 6, 3, 4), kwargs)


def fractalmar_large_in256(**kwargs: Any) -> FractalGen:
    """FractalMAR-L for ImageNet 256 (guiding pixel on)."""
    return _in256((1024, 512, 256, 64), (32, 8, 4, 1), (16, 8, 4, 4), kwargs)


def fractalmar_huge_in256(**kwargs: Any) -> FractalGen:
    """FractalMAR-H for ImageNet 256 (guiding pixel on)."""
    return _in256((1280, 640, 320, 64), (40, 10, 5, 1), (16, 8, 4, 4), kwargs)


def model_settings(
    settings: ModelConfig | Mapping[str, Any] | None = None, **fields: Any
) -> ModelConfig:
    """The validated model settings from a ``ModelConfig``, a mapping and/or keywords.

    A ``ModelConfig`` without keyword overrides is returned as is (it was validated
    when it was made); anything else is validated once, by ``ModelConfig``.

    Raises:
        ModelError: an unknown setting, or an invalid value (the message names it).
    """
    if isinstance(settings, ModelConfig) and not fields:
        return settings
    if isinstance(settings, ModelConfig):
        data: dict[str, Any] = settings.model_dump()
    else:
        dump = getattr(settings, "model_dump", None)
        data = dict(dump() if callable(dump) else (settings or {}))
    data.update(fields)
    known = list(ModelConfig.model_fields)
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ModelError(f"unknown model config keys {unknown}; expected some of {known}")
    try:
        return ModelConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"])
            message = str(error["msg"]).removeprefix("Value error, ")
            problems.append(f"{where}: {message}" if where else message)
        raise ModelError("; ".join(problems)) from None


def build_model(
    model_cfg: ModelConfig | Mapping[str, Any], *, in_channels: int, num_classes: int
) -> FractalGen:
    """Build a :class:`FractalGen` from the ``model`` section of the training config.

    Args:
        model_cfg: The section: a ``ModelConfig`` (used as validated) or a mapping of
            its fields (validated here).
        in_channels: Image channels (from the data).
        num_classes: Number of classes (from the data; 0 = unconditional).

    Returns:
        The model, freshly initialised.

    Raises:
        ModelError: (a ``ValueError`` and versionkit ``ConfigError``, exit code 2) on
            unknown keys or inconsistent values, naming the field.
    """
    try:
        return FractalGen(model_cfg, in_channels=in_channels, num_classes=num_classes)
    except ModelError as exc:
        raise ModelError(f"invalid model config: {exc}") from None
