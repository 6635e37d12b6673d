"""versionkit.lightning's adapter on a user's own module, in both Lightning namespaces."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning_support import (
    FILTERS,
    NAMESPACES,
    loaders,
    new_run,
    pl_module,
    resumed,
    toy_class,
    trainer_kwargs,
)

from versionkit.lightning import build_trainer, classes, fit
from versionkit.registry import Registry

pytestmark = [pytest.mark.filterwarnings(f) for f in FILTERS]


def _steps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("step_*.ckpt"))


def _step_of(path: Path) -> int:
    return int(torch.load(path, weights_only=True)["global_step"])


@pytest.mark.parametrize("lightning", NAMESPACES)
def test_layout_records_and_final_last_ckpt(tmp_path: Path, lightning: str) -> None:
    run = new_run(tmp_path / "exp")
    Registry(tmp_path / "exp").allocate()  # the run is 0, another version exists
    trainer = build_trainer(run, lightning=lightning, **trainer_kwargs(max_steps=5))
    assert isinstance(trainer, pl_module(lightning).Trainer)
    assert isinstance(trainer.strategy.checkpoint_io, classes(lightning).AtomicCheckpointIO)
    model = toy_class(lightning)()
    assert fit(run, trainer, model, *loaders()) == "completed"

    assert trainer.logger.version == 0 and trainer.logger.name == "logs"
    assert Path(trainer.logger.log_dir) == tmp_path / "exp/logs/version_0"
    assert list((tmp_path / "exp/logs/version_0").glob("events.out.tfevents.*"))
    assert not (tmp_path / "exp/logs/version_0/version_0").exists()
    folder = run.checkpoint_dir
    # validations at 2, 4 and the final step 5; top-3 kept; last.ckpt at the final step
    assert [n[:13] for n in _steps(folder)] == ["step_00000002", "step_00000004", "step_00000005"]
    assert _step_of(folder / "last.ckpt") == 5
    info = run.registry.get(0)
    assert info.status == "completed" and run.status == "completed"
    assert "val_loss" in info.metrics and "epoch" not in info.metrics
    recorded = sorted(Path(c["path"]).name for c in info.record["checkpoints"] if c["metrics"])
    assert recorded == _steps(folder)
    best = run.registry.best("val_loss", "min", version=0)
    assert best is not None and best.path.name.startswith("step_")


def test_last_ckpt_is_the_final_step_even_when_it_is_not_top_k(tmp_path: Path) -> None:
    # The "--max_steps 40 --val_every_n_steps 10 --save_top_k 1 --lr 1e-9": the
    # first validation is the best, so top-k never saves again; last.ckpt still moves.
    run = new_run(tmp_path / "exp")
    model = toy_class("pytorch_lightning")(val_by_step={10: 0.1, 20: 0.5, 30: 0.6, 40: 0.7})
    trainer = build_trainer(
        run, save_top_k=1, **trainer_kwargs(max_steps=40, val_check_interval=10)
    )
    assert fit(run, trainer, model, *loaders()) == "completed"
    assert _steps(run.checkpoint_dir) == ["step_00000010-val_loss_0.1000.ckpt"]
    assert _step_of(run.checkpoint_dir / "last.ckpt") == 40


@pytest.mark.parametrize("lightning", NAMESPACES)
def test_exception_saves_the_current_step_and_fails(tmp_path: Path, lightning: str) -> None:
    run = new_run(tmp_path / "exp")
    trainer = build_trainer(run, lightning=lightning, **trainer_kwargs(max_steps=10))
    with pytest.raises(RuntimeError, match="boom at step 3"):
        fit(run, trainer, toy_class(lightning)(fail_at=3), *loaders())
    info = run.registry.get(run.version)
    assert info.status == "failed" and "RuntimeError: boom at step 3" in (info.error or "")
    assert _step_of(run.checkpoint_dir / "last.ckpt") == 3


def test_ctrl_c_saves_interrupts_and_gives_ctrl_c_back(tmp_path: Path) -> None:
    run = new_run(tmp_path / "exp")
    trainer = build_trainer(run, **trainer_kwargs(max_steps=10))
    with pytest.raises(KeyboardInterrupt):
        fit(run, trainer, toy_class("pytorch_lightning")(interrupt_at=3), *loaders())
    assert run.registry.get(run.version).status == "interrupted"
    assert _step_of(run.checkpoint_dir / "last.ckpt") == 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("lightning", NAMESPACES)
def test_nan_loss_fails_the_run_naming_the_step(
    tmp_path: Path, lightning: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run = new_run(tmp_path / "exp")
    trainer = build_trainer(run, lightning=lightning, **trainer_kwargs(max_steps=10))
    assert fit(run, trainer, toy_class(lightning)(nan_at=3), *loaders()) == "failed"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: the training loss became nan at step 3")
    info = run.registry.get(run.version)
    assert info.status == "failed" and "step 3" in (info.error or "")
    assert not [p for p in run.checkpoint_dir.iterdir() if "nan" in p.name]
    blob = torch.load(run.checkpoint_dir / "last.ckpt", weights_only=True)
    assert blob["global_step"] == 3
    assert all(torch.isfinite(t).all() for t in blob["state_dict"].values())


def test_nan_validation_metric_never_names_a_checkpoint(tmp_path: Path) -> None:
    run = new_run(tmp_path / "exp")
    model = toy_class("pytorch_lightning")(val_by_step={2: 1.0, 4: float("nan")})
    trainer = build_trainer(run, **trainer_kwargs(max_steps=6))
    assert fit(run, trainer, model, *loaders()) == "failed"
    assert _steps(run.checkpoint_dir) == ["step_00000002-val_loss_1.0000.ckpt"]
    assert run.registry.get(run.version).status == "failed"
    assert "val_loss became nan at step 4" in (run.registry.get(run.version).error or "")


def test_top_k_holds_across_a_resume_from_an_older_checkpoint(tmp_path: Path) -> None:
    # A crash after the top-k saved newer files than last.ckpt knows of: on resume they
    # go, and the registry forgets them; the version ends with exactly save_top_k files.
    Toy = toy_class("pytorch_lightning")
    vals = {2: 5.0, 4: 4.0, 6: 3.0, 8: 2.0, 10: 1.0, 12: 0.5}
    run = new_run(tmp_path / "exp")
    trainer = build_trainer(run, save_top_k=3, **trainer_kwargs(max_steps=4))
    fit(run, trainer, Toy(val_by_step=vals), *loaders())
    older = run.checkpoint_dir / "older.ckpt.bak"
    os.replace(run.checkpoint_dir / "last.ckpt", older)  # the state at step 4
    second = resumed(run, older)
    trainer = build_trainer(second, save_top_k=3, **trainer_kwargs(max_steps=8))
    fit(second, trainer, Toy(val_by_step=vals), *loaders())
    assert len(_steps(run.checkpoint_dir)) == 3  # 4, 6, 8 (2 dropped by top-k)
    os.replace(older, run.checkpoint_dir / "last.ckpt")  # "crash": back to step 4
    again = resumed(run, run.checkpoint_dir / "last.ckpt")
    trainer = build_trainer(again, save_top_k=3, **trainer_kwargs(max_steps=12))
    # The steps after 4 are trained again and validate differently (as on a GPU): the
    # crashed run's files for steps 6 and 8 are not the ones this run writes.
    redo = {**vals, 6: 3.5, 8: 2.5}
    assert fit(again, trainer, Toy(val_by_step=redo), *loaders()) == "completed"
    files = _steps(run.checkpoint_dir)
    assert files == [
        "step_00000008-val_loss_2.5000.ckpt",
        "step_00000010-val_loss_1.0000.ckpt",
        "step_00000012-val_loss_0.5000.ckpt",
    ]
    recorded = {
        Path(c["path"]).name
        for c in run.registry.get(run.version).record["checkpoints"]
        if c["metrics"]
    }
    assert recorded == set(files)


def _fit_steps(lightning: str, run: Any, max_steps: int, **kw: Any) -> tuple[Any, Any]:
    Toy = toy_class(lightning)
    pl_module(lightning).seed_everything(0, verbose=False)
    model = Toy(adamw=True)
    trainer = build_trainer(
        run, lightning=lightning, **trainer_kwargs(max_steps=max_steps, val_check_interval=5, **kw)
    )
    train, val = loaders(shuffle=True, batch_size=6)  # 11 batches per epoch
    fit(run, trainer, model, train, val)
    return model, trainer


@pytest.mark.parametrize("lightning", NAMESPACES)
def test_resume_mid_epoch_continues_exactly(tmp_path: Path, lightning: str) -> None:
    # AdamW (state), a step LR schedule, a shuffled loader, a resume mid-epoch (step 15 of
    # 11-batch epochs): the resumed run's losses and weights equal the uninterrupted one's.
    ref, _ = _fit_steps(lightning, new_run(tmp_path / "a"), 30)
    run = new_run(tmp_path / "b")
    first, _ = _fit_steps(lightning, run, 15)
    assert _step_of(run.checkpoint_dir / "last.ckpt") == 15
    second, trainer = _fit_steps(lightning, resumed(run, run.checkpoint_dir / "last.ckpt"), 30)
    assert trainer.global_step == 30
    assert first.losses + second.losses == ref.losses
    for a, b in zip(ref.parameters(), second.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_run_pruned_by_a_callback_keeps_last_ckpt(tmp_path: Path) -> None:
    from versionkit.run import RunPruned

    pl = pl_module("lightning")

    class Pruner(pl.Callback):  # type: ignore[misc,name-defined]
        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
            if trainer.global_step == 4:
                raise RunPruned("val_loss 0.9 is worse than the median")

    run = new_run(tmp_path / "exp")
    trainer = build_trainer(
        run, lightning="lightning", callbacks=[Pruner()], **trainer_kwargs(max_steps=10)
    )
    with pytest.raises(RunPruned):
        fit(run, trainer, toy_class("lightning")(), *loaders())
    info = run.registry.get(run.version)
    assert info.status == "pruned" and run.status == "pruned"
    assert _step_of(run.checkpoint_dir / "last.ckpt") == 4


def test_progress_bar_counts_steps_from_the_resumed_one(tmp_path: Path) -> None:
    from versionkit.lightning import StepProgressBar

    run = new_run(tmp_path / "exp")
    fit(
        run,
        build_trainer(run, **trainer_kwargs(max_steps=6)),
        toy_class("pytorch_lightning")(),
        *loaders(),
    )
    again = resumed(run, run.checkpoint_dir / "last.ckpt")
    trainer = build_trainer(again, **trainer_kwargs(max_steps=10, enable_progress_bar=True))
    bars = [c for c in trainer.callbacks if isinstance(c, StepProgressBar)]
    assert len(bars) == 1
    fit(again, trainer, toy_class("pytorch_lightning")(), *loaders())
    bar = bars[0].train_progress_bar
    # step/total over the whole run; tqdm's rate and ETA count from `initial`, i.e. only
    # the 4 steps this process ran
    assert (bar.n, bar.total, bar.initial) == (10, 10, 6)
    assert bars[0].get_metrics(trainer, None)["v_num"] == run.version


def test_mistakes_in_build_trainer_and_fit_are_one_clear_error(tmp_path: Path) -> None:
    from versionkit.errors import ConfigError

    run = new_run(tmp_path / "exp")
    pl = pl_module("pytorch_lightning")
    for kwargs, needle in (
        ({"lightning": "keras"}, "lightning='keras': expected one of"),
        ({"mode": "median"}, "mode: expected 'min' or 'max'"),
        ({"logger": False}, "drop logger="),
        ({"enable_checkpointing": False}, "save_top_k=0"),
        (
            {"lightning": "lightning", "callbacks": [pl.Callback()]},
            "Callback is a pytorch_lightning object but the trainer is lightning's",
        ),
    ):
        with pytest.raises(ConfigError, match=needle):
            build_trainer(run, **kwargs)
    trainer = build_trainer(run, **trainer_kwargs())
    with pytest.raises(ConfigError, match="lightning='lightning'"):
        fit(run, trainer, toy_class("lightning")(), *loaders())
    plain = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    with pytest.raises(ConfigError, match=r"not made by versionkit\.lightning\.build_trainer"):
        fit(run, plain, toy_class("pytorch_lightning")(), *loaders())
    assert not list(run.checkpoint_dir.glob("*.ckpt"))
    assert run.registry.get(run.version).status == "failed"
