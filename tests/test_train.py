"""fractalgen.train: config printing, bad input, reproducibility and exact resume."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_train_helpers import FILTERS, state_of, step_checkpoints, write_tiny

from fractalgen.module import (
    FractalGenModule,
    StepBatchSampler,
    cosine_lr_factor,
    no_weight_decay_names,
)
from fractalgen.train import main
from versionkit.registry import Registry
from versionkit.run import RUN_ENV

pytestmark = [pytest.mark.filterwarnings(f) for f in FILTERS]


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(RUN_ENV, raising=False)
    monkeypatch.delenv("VERSIONKIT_BACKEND", raising=False)
    write_tiny(tmp_path)
    yield tmp_path


def test_print_config_round_trips(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo_config = Path(__file__).resolve().parents[1] / "config" / "train_small.yaml"
    assert main(["--config", str(repo_config), "--max_steps", "7", "--print_config"]) == 0
    first = capsys.readouterr().out
    assert "max_steps: 7" in first and "name: fractalgen_small" in first
    (workdir / "printed.yaml").write_text(first)
    assert main(["--config", "printed.yaml", "--print_config"]) == 0
    assert capsys.readouterr().out == first
    assert not (workdir / "outputs").exists(), "--print_config must not start a run"


@pytest.mark.parametrize(
    ("argv", "needle", "code"),
    [
        (["--max_stepz", "3"], "max_steps", 2),
        (["--dataset", "folder", "--path", "no/such/folder"], "no/such/folder", 2),
        (["--config", "missing.yaml"], "missing.yaml", 2),
        (["--resume", "nowhere/last.ckpt"], "--resume nowhere/last.ckpt: no such file", 3),
        (["--resume", "latest"], "experiment outputs/fractalgen does not exist", 3),
        (["--resume", ""], "--resume an empty target", 2),
        (
            ["--accelerator", "gpu"] if not torch.cuda.is_available() else ["--devices", "99"],
            "cannot run",
            2,
        ),
    ],
)
def test_user_mistakes_exit_with_one_message(
    workdir: Path, capsys: pytest.CaptureFixture[str], argv: list[str], needle: str, code: int
) -> None:
    assert main(argv) == code
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err and err.count("\n") == 1
    assert "Traceback" not in err
    assert not (workdir / "outputs" / "fractalgen" / "checkpoints").exists()


def test_lr_schedule_and_no_decay_groups() -> None:
    factors = [
        cosine_lr_factor(s, warmup_steps=4, total_steps=12, min_ratio=0.1) for s in range(14)
    ]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in itertools.pairwise(factors[3:]))
    assert math.isclose(factors[12], 0.1) and math.isclose(factors[13], 0.1)
    from fractalgen.config import TrainConfig
    from fractalgen.model import build_model

    model = build_model(TrainConfig().model.model_dump(), in_channels=1, num_classes=10)
    skip = no_weight_decay_names(model)
    params = dict(model.named_parameters())
    # The reference's add_weight_decay: no decay iff ndim <= 1 or the name ends in bias.
    assert skip == {n for n, p in params.items() if p.ndim < 2 or n.endswith("bias")}
    assert "pixel_head.logit_bias" in skip and params["pixel_head.logit_bias"].ndim == 2
    assert {"levels.0.patch_emb.bias", "levels.0.norm.weight"} <= skip
    # Embeddings, tokens and position embeddings are decayed: there is no skip list.
    decayed = {
        "class_emb.weight",
        "fake_latent",
        "levels.0.pos_embed",
        "levels.0.mask_token",
        "levels.0.blocks.0.attn.qkv.weight",
        "pixel_head.codebook",
    }
    assert decayed <= params.keys() and not decayed & skip


def test_step_sampler_is_a_function_of_the_step() -> None:
    full = StepBatchSampler(10, 4, seed=1)
    it = iter(full)
    batches = [next(it) for _ in range(6)]
    # every epoch (10 items) is a permutation: the first 20 positions hold each index twice
    flat = [i for b in batches[:5] for i in b]
    assert sorted(flat) == sorted(list(range(10)) * 2)
    resumed = iter(StepBatchSampler(10, 4, seed=1, start_step=lambda: 3))
    assert next(resumed) == batches[3]
    # two ranks split each global batch
    r0 = next(iter(StepBatchSampler(10, 2, seed=1, rank=0, world_size=2)))
    r1 = next(iter(StepBatchSampler(10, 2, seed=1, rank=1, world_size=2)))
    assert r0 + r1 == batches[0]


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> list[str]:
    assert main(argv) == 0
    return [line for line in capsys.readouterr().out.splitlines() if line.startswith("✓")]


@pytest.mark.slow
def test_same_config_and_seed_give_bitwise_identical_runs(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _run(["--config", "config/tiny.yaml"], capsys)
    _run(["--config", "config/tiny.yaml"], capsys)
    reg = Registry("outputs/tiny")
    a, b = reg.get(0), reg.get(1)
    assert a.metrics["val_loss"] == b.metrics["val_loss"]
    names = [sorted(p.name for p in reg.checkpoint_dir(n).glob("step_*.ckpt")) for n in (0, 1)]
    assert names[0] == names[1] and len(names[0]) == 2
    for name in [*names[0], "last.ckpt"]:
        sa = state_of(reg.checkpoint_dir(0) / name)
        sb = state_of(reg.checkpoint_dir(1) / name)
        assert sa.keys() == sb.keys()
        for key in sa:
            assert torch.equal(sa[key], sb[key]), key


@pytest.mark.slow
def test_resume_continues_the_same_version_like_an_uninterrupted_run(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # An uninterrupted 6-step run (validations and checkpoints at steps 2, 4 and 6).
    _run(["--config", "config/tiny.yaml", "--max_steps", "6"], capsys)
    reg = Registry("outputs/tiny")
    ck = reg.checkpoint_dir(0)
    final = state_of(ck / "last.ckpt")
    final_blob = torch.load(ck / "last.ckpt", weights_only=True)
    val_loss = reg.get(0).metrics["val_loss"]
    step4 = next(ck.glob("step_00000004-*.ckpt"))
    # As after a crash right after step 4: continue from that checkpoint.
    (ck / "last.ckpt").unlink()
    next(ck.glob("step_00000006-*.ckpt")).unlink()
    lines = _run(["--resume", str(step4)], capsys)
    assert lines[:2] == [
        "✓ Resuming experiment version: 0",
        "✓ Checkpoint dir: outputs/tiny/checkpoints/version_0",
    ]
    assert lines[2] == f"✓ Resuming from: {step4}"
    assert [v.version for v in reg.list()] == [0], "resume must not allocate a new version"
    assert sorted(p.name for p in (workdir / "outputs/tiny/logs").iterdir()) == ["version_0"]
    events = (workdir / "outputs/tiny/logs/version_0").glob("events.out.tfevents.*")
    assert len([p for p in events if not p.name.endswith("hparams")]) == 2  # one per process
    info = reg.get(0)
    assert info.status == "completed" and len(info.record["resumes"]) == 1
    # Bitwise the uninterrupted run: weights, val loss, step, optimizer and lr schedule.
    assert info.metrics["val_loss"] == val_loss
    resumed = state_of(ck / "last.ckpt")
    for key in final:
        assert torch.equal(final[key], resumed[key]), key
    blob = torch.load(ck / "last.ckpt", weights_only=True)
    assert blob["global_step"] == final_blob["global_step"] == 6
    assert blob["lr_schedulers"] == final_blob["lr_schedulers"]
    for a, b in zip(
        blob["optimizer_states"][0]["state"].values(),
        final_blob["optimizer_states"][0]["state"].values(),
        strict=True,
    ):
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(
            a["exp_avg_sq"], b["exp_avg_sq"]
        )
    assert len(step_checkpoints(ck)) == 3


@pytest.mark.slow
def test_resume_refuses_a_model_change_but_takes_latest(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _run(["--config", "config/tiny.yaml", "--max_steps", "2"], capsys)
    ck = "outputs/tiny/checkpoints/version_0"
    assert main(["--resume", ck, "--model.embed_dim_list", "32,8,8"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --model.embed_dim_list: cannot change model.embed_dim_list")
    assert "Traceback" not in err
    lines = _run(["--config", "config/tiny.yaml", "--resume", "latest", "--max_steps", "4"], capsys)
    assert lines[0] == "✓ Resuming experiment version: 0"
    assert torch.load(f"{ck}/last.ckpt", weights_only=True)["global_step"] == 4
    assert [v.version for v in Registry("outputs/tiny").list()] == [0]
    # Not above the checkpoint's step: nothing to train, said clearly.
    assert main(["--resume", ck, "--max_steps", "3"]) == 2
    assert "already at step 4" in capsys.readouterr().err
    # A config of another experiment cannot continue this one.
    other = workdir / "config" / "other.yaml"
    other.write_text(
        (workdir / "config" / "tiny.yaml").read_text().replace("name: tiny", "name: other")
    )
    assert main(["--config", str(other), "--resume", f"{ck}/last.ckpt", "--max_steps", "9"]) == 2
    assert "cannot change experiment.name when resuming (saved 'tiny', given 'other')" in (
        capsys.readouterr().err
    )
    # A damaged checkpoint is refused before anything starts.
    data = (workdir / ck / "last.ckpt").read_bytes()
    (workdir / ck / "last.ckpt").write_bytes(data[: len(data) // 3])
    assert main(["--resume", ck, "--max_steps", "9"]) == 2
    err = capsys.readouterr().err
    assert "not a readable checkpoint" in err and "Traceback" not in err
    assert Registry("outputs/tiny").get(0).status == "completed"


@pytest.mark.slow
def test_flags_only_run_uses_schema_defaults(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tiny = [
        "--embed_dim_list",
        "16,8,8",
        "--num_blocks_list",
        "1,1,1",
        "--num_heads_list",
        "2,1,1",
        "--limit_val_batches",
        "1",
        "--val_batch_size",
        "32",
        "--num_iter_list",
        "1,1",
    ]
    lines = _run(["--train_batch_size", "8", "--max_steps", "2", *tiny], capsys)
    assert lines == [
        "✓ Experiment version: 0",
        "✓ Checkpoint dir: outputs/fractalgen/checkpoints/version_0",
        "✓ Config generated from command-line flags",
        "✓ Config saved to: outputs/fractalgen/checkpoints/version_0/config.yaml",
        lines[4],
    ]
    assert lines[4].startswith(
        "✓ Best checkpoint: outputs/fractalgen/checkpoints/version_0/step_00000002-"
    )
    saved = (workdir / "outputs/fractalgen/checkpoints/version_0/config.yaml").read_text()
    assert "train_batch_size: 8" in saved and "# Flags: --train_batch_size 8 --max_steps 2" in saved
    assert not (workdir / "outputs/fractalgen/checkpoints/version_0/config.source.yaml").exists()
    # The tiny file config in config/ is not involved: schema defaults, not its values.
    assert "  name: fractalgen\n" in saved and "name: tiny" not in saved
    assert not (workdir / "outputs" / "tiny").exists()


@pytest.mark.parametrize(
    "path",
    sorted((Path(__file__).resolve().parents[1] / "config").glob("*.yaml")),
    ids=lambda p: p.name,
)
def test_bundled_configs_load(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(path), "--print_config"]) == 0
    text = capsys.readouterr().out
    names = {"train_small": "fractalgen_small", "train_fidelity": "fractalgen_fidelity",
             "train_default": "fractalgen"}
    assert f"  name: {names.get(path.stem, path.stem)}\n" in text


def test_train_fidelity_is_the_specs_reference_run_and_train_small_its_ar_variant() -> None:
    from fractalgen.config import TrainConfig
    from versionkit.config import load_yaml_config

    configs = Path(__file__).resolve().parents[1] / "config"
    fidelity = load_yaml_config(TrainConfig, configs / "train_fidelity.yaml")
    assert fidelity.experiment.name == "fractalgen_fidelity"
    m = fidelity.model
    assert m.img_size_list == [8, 2, 1] and m.generator_type_list == ["mar", "mar"]
    assert m.embed_dim_list == [64, 32, 16] and m.num_blocks_list == [2, 1, 1]
    assert m.num_heads_list == [4, 2, 2] and m.num_conds == 5 and m.label_drop_prob == 0.1
    assert fidelity.optim.lr == 1e-3 and fidelity.optim.warmup_steps == 100
    assert fidelity.trainer.max_steps == 3000 and fidelity.data.train_batch_size == 64

    small = load_yaml_config(TrainConfig, configs / "train_small.yaml")
    assert small.experiment.name == "fractalgen_small" and small.data.dataset == "digits"
    # The same sizes, with AR levels drawing the middle patches first, more null-class
    # training, and lr 2e-3 with dropout 0.25 for 4,000 steps (README: "Unconditional
    # samples").
    assert small.model.generator_type_list == ["ar", "ar"] and small.model.label_drop_prob == 0.3
    assert small.model.ar_order == "center" and fidelity.model.ar_order == "raster"
    assert small.model.attn_dropout == small.model.proj_dropout == 0.25
    same = {"generator_type_list", "ar_order", "label_drop_prob", "attn_dropout", "proj_dropout"}
    assert {k: v for k, v in small.model.model_dump().items() if k not in same} == {
        k: v for k, v in m.model_dump().items() if k not in same}
    assert small.optim == fidelity.optim.model_copy(update={"lr": 2e-3})
    assert small.trainer == fidelity.trainer.model_copy(update={"max_steps": 4000})
    assert small.trainer.accelerator == "cpu"


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(1, 40),
    batch=st.integers(1, 9),
    world=st.integers(1, 4),
    seed=st.integers(0, 2**31 - 1),
    start=st.integers(0, 30),
)
def test_step_sampler_properties(size: int, batch: int, world: int, seed: int, start: int) -> None:
    """Resuming at any step sees the uninterrupted stream; ranks tile each global batch;
    every ``size`` consecutive positions of the stream form one permutation (an epoch)."""
    steps = 6
    ranks = [
        iter(StepBatchSampler(size, batch, seed=seed, rank=r, world_size=world))
        for r in range(world)
    ]
    stream = [[next(it) for it in ranks] for _ in range(start + steps)]
    resumed = [
        iter(
            StepBatchSampler(
                size, batch, seed=seed, rank=r, world_size=world, start_step=lambda: start
            )
        )
        for r in range(world)
    ]
    for step in range(start, start + steps):
        assert [next(it) for it in resumed] == stream[step]
    flat = [i for per_step in stream for per_rank in per_step for i in per_rank]
    for lo in range(0, len(flat) - size + 1, size):
        assert sorted(flat[lo : lo + size]) == list(range(size))


@settings(max_examples=200, deadline=None)
@given(
    warmup=st.integers(0, 50),
    total=st.integers(1, 500),
    min_ratio=st.floats(0.0, 1.0),
    step=st.integers(0, 600),
)
def test_lr_factor_bounds_and_shape(warmup: int, total: int, min_ratio: float, step: int) -> None:
    f = cosine_lr_factor(step, warmup_steps=warmup, total_steps=total, min_ratio=min_ratio)
    if step < warmup:
        assert f == (step + 1) / warmup
    else:
        assert min(min_ratio, 1.0) - 1e-12 <= f <= 1.0 + 1e-12
        after = cosine_lr_factor(
            step + 1, warmup_steps=warmup, total_steps=total, min_ratio=min_ratio
        )
        assert after <= f + 1e-12
    if step >= max(total, warmup):
        assert math.isclose(f, min_ratio, abs_tol=1e-12)


@pytest.mark.slow
def test_ema_weights_are_kept_checkpointed_and_used_for_sampling(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fractalgen.sample import load_checkpoint

    _run(["--config", "config/tiny.yaml", "--ema_decay", "0.5", "--max_steps", "2"], capsys)
    ckpt = workdir / "outputs/tiny/checkpoints/version_0/last.ckpt"
    state = state_of(ckpt)
    model_keys = sorted(k[len("model.") :] for k in state if k.startswith("model."))
    ema_keys = sorted(k[len("ema.") :] for k in state if k.startswith("ema."))
    assert model_keys == ema_keys and model_keys
    # After two updates with decay 0.5 the EMA differs from the trained weights...
    assert any(not torch.equal(state[f"model.{k}"], state[f"ema.{k}"]) for k in model_keys)
    # ...and sampling uses it unless told otherwise.
    assert load_checkpoint(ckpt).weights == "ema"
    assert load_checkpoint(ckpt, weights="model").weights == "model"


def _tiny_module(num_classes: int, num_images: int) -> FractalGenModule:
    config = {
        "model": {
            "img_size_list": [8, 2, 1],
            "embed_dim_list": [16, 8, 8],
            "num_blocks_list": [1, 1, 1],
            "num_heads_list": [2, 1, 1],
        },
        "sampling": {"num_iter_list": [1, 1], "num_images": num_images},
    }
    return FractalGenModule(config, in_channels=1, num_classes=num_classes)


@pytest.mark.parametrize(
    ("num_classes", "num_images", "calls"),
    [
        (1000, 4, [[0, 250, 500, 750]]),
        (10, 20, [list(range(10)) * 2]),
        (3, 70, [[i % 3 for i in range(64)], [i % 3 for i in range(64, 70)]]),
    ],
)
def test_sample_grid_samples_exactly_num_images(
    monkeypatch: pytest.MonkeyPatch, num_classes: int, num_images: int, calls: list[list[int]]
) -> None:
    module = _tiny_module(num_classes, num_images)
    seen: list[list[int]] = []
    real = module.model.sample

    def spy(batch_size: int, labels: torch.Tensor | None = None, **kw: Any) -> torch.Tensor:
        seen.append(labels.tolist() if labels is not None else [])
        return real(batch_size, labels, **kw)

    monkeypatch.setattr(module.model, "sample", spy)
    grid = module.sample_grid()
    assert seen == calls
    assert grid.dtype == np.uint8 and grid.ndim == 3 and grid.shape[2] == 3


@pytest.mark.slow
def test_unconditional_run_trains_checkpoints_and_samples(
    workdir: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from fractalgen import sample

    _run(["--config", "config/tiny.yaml", "--data.num_classes", "0", "--max_steps", "2"], capsys)
    ckpt = workdir / "outputs/tiny/checkpoints/version_0/last.ckpt"
    blob = torch.load(ckpt, weights_only=True)
    assert blob["global_step"] == 2 and blob["hyper_parameters"]["num_classes"] == 0
    assert not any(k.startswith("model.class_emb") for k in blob["state_dict"])
    assert list((workdir / "outputs/tiny/logs/version_0/samples").glob("samples_step_*.png"))
    out = tmp_path / "uncond"
    common = ["--checkpoint", str(ckpt), "--num_images", "2", "--num_iter", "1,1"]
    assert sample.main([*common, "--mode", "unconditional", "--output_dir", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["00000.png", "00001.png", "grid.png"]
    capsys.readouterr()
    assert sample.main([*common, "--mode", "class", "--output_dir", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --mode class: this model has no classes")
    assert err.count("error:") == 1 and "Traceback" not in err


def test_ddp_ranks_draw_their_own_random_numbers() -> None:
    # Like the reference's seed + rank: the same start on every rank, then one stream each
    # (masks, orders, dropout, label drop), reproducible for a given rank.
    import types

    from fractalgen.config import TrainConfig

    module = FractalGenModule(TrainConfig().model_dump(mode="json"), 1, 10)

    def draws(world_size: int, rank: int) -> torch.Tensor:
        module._trainer = types.SimpleNamespace(world_size=world_size, global_rank=rank)
        torch.manual_seed(0)
        module.on_train_start()
        return torch.rand(4)

    try:
        rank0, rank1 = draws(2, 0), draws(2, 1)
        assert not torch.equal(rank0, rank1)
        assert torch.equal(rank1, draws(2, 1))
        untouched = torch.rand(4, generator=torch.Generator().manual_seed(0))
        assert torch.equal(draws(1, 0), untouched)  # one process: the stream is as seeded
    finally:
        module._trainer = None


def test_cpu_threads_hold_during_the_run_and_are_restored_after(workdir: Path) -> None:
    """``trainer.cpu_threads`` sets PyTorch's threads for the run (never above what the
    process had, e.g. a sweep worker's share) and puts the count back afterwards."""
    import pytorch_lightning as pl

    from fractalgen.config import parse_train_args
    from fractalgen.train import train

    seen: list[int] = []

    class Threads(pl.Callback):  # type: ignore[misc]
        def on_train_batch_start(self, *args: Any) -> None:
            seen.append(torch.get_num_threads())

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for asked, expected in (("1", 1), ("64", 2)):
            seen.clear()
            loaded = parse_train_args(["--config", "config/tiny.yaml", "--cpu_threads", asked])
            result = train(loaded, callbacks=[Threads()], printer=lambda _line: None)
            assert result.status == "completed"
            assert seen and set(seen) == {expected}
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
