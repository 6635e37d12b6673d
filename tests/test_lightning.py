"""versionkit.lightning with a toy LightningModule: layout, registry records, resume, ranks."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from versionkit.config import ConfigModel, LoadedConfig, dump_config
from versionkit.errors import ConfigError, RegistryError
from versionkit.lightning import (
    RUN_ENV,
    AtomicCheckpointIO,
    ExperimentRun,
    check_resume_changes,
    global_rank_from_env,
    resolve_resume,
    start_run,
)
from versionkit.registry import Registry

pytestmark = pytest.mark.filterwarnings(
    # Lightning's hints about loader workers and short epochs do not apply to toy data.
    r"ignore:.*does not have many workers.*",
    r"ignore:.*is smaller than the logging interval.*",
    # Lightning 2.6 + torch 2.13: Lightning still builds a pytree LeafSpec.
    r"ignore:.*isinstance\(treespec, LeafSpec\).*:FutureWarning",
)


class ToyConfig(ConfigModel):
    lr: float = 0.05
    width: int = 4


class Toy(pl.LightningModule):
    """Linear regression whose val_loss we can steer: ``val_losses`` is replayed in order."""

    def __init__(
        self,
        width: int = 4,
        fail_at: int | None = None,
        interrupt_at: int | None = None,
        val_losses: list[float] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters({"width": width})
        self.net = nn.Linear(width, 1)
        self.fail_at = fail_at
        self.interrupt_at = interrupt_at
        self.val_losses = list(val_losses or [])
        self.seen: list[float] = []
        self._vals = 0

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        if self.fail_at is not None and self.global_step == self.fail_at:
            raise RuntimeError(f"boom at step {self.global_step}")
        if self.interrupt_at is not None and self.global_step == self.interrupt_at:
            raise KeyboardInterrupt
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.seen.append(float(loss.detach()))
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        if self.val_losses:
            loss = torch.tensor(self.val_losses[min(len(self.val_losses) - 1, self._vals)])
        self.log("val_loss", loss, on_epoch=True, batch_size=x.shape[0])

    def on_validation_epoch_end(self) -> None:
        self._vals += 1

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.05)


def _loaders(width: int = 4) -> tuple[DataLoader[Any], DataLoader[Any]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, width, generator=g)
    y = x.sum(1, keepdim=True)
    ds = TensorDataset(x, y)
    return DataLoader(ds, batch_size=8), DataLoader(ds, batch_size=32)


def _loaded(tmp: Path | None = None, flags: list[str] | None = None) -> LoadedConfig[ToyConfig]:
    cfg = ToyConfig()
    if tmp is None:
        return LoadedConfig(cfg, None, None, list(flags or []), {})
    src = tmp / "toy.yaml"
    text = "# my comment\n" + dump_config(cfg)
    src.write_text(text)
    return LoadedConfig(cfg, Path("toy.yaml"), text, list(flags or []), {})


def _trainer(run: ExperimentRun, **kw: Any) -> pl.Trainer:
    kw.setdefault("max_steps", 5)
    kw.setdefault("val_check_interval", 2)
    kw.setdefault("check_val_every_n_epoch", None)
    return run.trainer(
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        accelerator="cpu",
        **kw,
    )


@pytest.fixture
def chdir_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(RUN_ENV, raising=False)
    yield tmp_path


def test_layout_console_lines_and_records(chdir_tmp: Path) -> None:
    lines: list[str] = []
    reg = Registry("out/exp")
    run = start_run(
        reg,
        _loaded(chdir_tmp, ["--lr", "0.05"]),
        display_root="out/exp",
        printer=lines.append,
        command=["train.py"],
        seed=3,
    )
    assert lines == [
        "✓ Experiment version: 0",
        "✓ Checkpoint dir: out/exp/checkpoints/version_0",
        "✓ Saved config from: toy.yaml",
        "✓ Config saved to: out/exp/checkpoints/version_0/config.yaml",
    ]
    model = Toy()
    train, val = _loaders()
    run.fit(_trainer(run), model, train, val)

    ckdir = chdir_tmp / "out/exp/checkpoints/version_0"
    names = sorted(p.name for p in ckdir.iterdir())
    assert "last.ckpt" in names and "config.yaml" in names
    assert (ckdir / "config.source.yaml").read_text().startswith("# my comment\n")
    steps = sorted(n for n in names if n.startswith("step_"))
    # validations at steps 2, 4 and (forced) 5: three named checkpoints, top-3 kept
    assert [n[:13] for n in steps] == ["step_00000002", "step_00000004", "step_00000005"]
    for n in steps:
        assert n.endswith(".ckpt") and "-val_loss_" in n
    logs = list((chdir_tmp / "out/exp/logs/version_0").glob("events.out.tfevents.*"))
    assert logs, "TensorBoard events must be written directly into logs/version_0"
    assert not (chdir_tmp / "out/exp/logs/version_0/version_0").exists()
    saved = (ckdir / "config.yaml").read_text()
    assert "# Config file: toy.yaml" in saved and "# Flags: --lr 0.05" in saved
    info = reg.get(0)
    assert info.status == "completed" and info.seed == 3
    assert "val_loss" in info.metrics
    assert info.record["config_file"] == "toy.yaml" and info.record["flags"] == ["--lr", "0.05"]
    recorded = sorted(c.path.name for c in reg.checkpoints(0) if c.path.name.startswith("step_"))
    assert recorded == steps
    assert all(c.step is not None for c in reg.checkpoints(0) if c.path.name.startswith("step_"))
    # Checkpoints load without arbitrary unpickling.
    blob = torch.load(ckdir / "last.ckpt", weights_only=True)
    assert blob["global_step"] == 5
    assert os.environ.get(RUN_ENV) is None, "the hand-over variable must not outlive the run"


def test_second_run_gets_next_version_and_flags_only_line(chdir_tmp: Path) -> None:
    for expected in (0, 1):
        lines: list[str] = []
        run = start_run(Registry("exp"), _loaded(), display_root="exp", printer=lines.append)
        assert run.version == expected
        assert lines[2] == "✓ Config generated from command-line flags"
        assert lines[1] == f"✓ Checkpoint dir: exp/checkpoints/version_{expected}"
        run.close()
    assert not (chdir_tmp / "exp/checkpoints/version_1/config.source.yaml").exists()


def test_top_k_removal_is_recorded(chdir_tmp: Path) -> None:
    reg = Registry("exp")
    run = start_run(reg, _loaded(), display_root="exp", printer=lambda _l: None)
    model = Toy(val_losses=[3.0, 1.0, 2.0, 0.5])
    train, val = _loaders()
    run.fit(_trainer(run, max_steps=8, checkpoint={"save_top_k": 2}), model, train, val)
    files = sorted(p.name for p in run.checkpoint_dir.glob("step_*.ckpt"))
    assert files == ["step_00000004-val_loss_1.0000.ckpt", "step_00000008-val_loss_0.5000.ckpt"]
    recorded = sorted(Path(c["path"]).name for c in reg.get(0).record["checkpoints"])
    assert recorded == files
    best = reg.best("val_loss", "min", version=0)
    assert best is not None and best.path.name == files[1]


def test_failure_and_interrupt_are_recorded(chdir_tmp: Path) -> None:
    reg = Registry("exp")
    train, val = _loaders()
    run = start_run(reg, _loaded(), display_root="exp", printer=lambda _l: None)
    with pytest.raises(RuntimeError, match="boom"):
        run.fit(_trainer(run), Toy(fail_at=3), train, val)
    info = reg.get(0)
    assert info.status == "failed" and "RuntimeError: boom at step 3" in (info.error or "")

    run = start_run(reg, _loaded(), display_root="exp", printer=lambda _l: None)
    with pytest.raises(KeyboardInterrupt):
        run.fit(_trainer(run), Toy(interrupt_at=2), train, val)
    assert reg.get(1).status == "interrupted"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_resume_continues_same_version_exactly(chdir_tmp: Path) -> None:
    reg = Registry("exp")
    train, val = _loaders()
    # uninterrupted reference: 16 steps (two epochs of 8 batches)
    pl.seed_everything(0, verbose=False)
    run = start_run(reg, _loaded(), display_root="exp", printer=lambda _l: None)
    ref = Toy()
    run.fit(_trainer(run, max_steps=16, val_check_interval=8), ref, train, val)

    # 8 steps, then resume to 16 in the same version
    pl.seed_everything(0, verbose=False)
    run = start_run(reg, _loaded(), display_root="exp", printer=lambda _l: None)
    first = Toy()
    run.fit(_trainer(run, max_steps=8, val_check_interval=8), first, train, val)
    target = resolve_resume(run.checkpoint_dir)
    assert target.version == 1 and target.checkpoint.name == "last.ckpt"
    lines: list[str] = []
    run2 = start_run(reg, _loaded(), display_root="exp", resume=target, printer=lines.append)
    assert run2.version == 1
    assert lines[0] == "✓ Resuming experiment version: 1"
    second = Toy()
    trainer = _trainer(run2, max_steps=16, val_check_interval=8)
    run2.fit(trainer, second, train, val)
    assert trainer.global_step == 16
    assert sorted(p.name for p in (chdir_tmp / "exp/checkpoints").iterdir()) == [
        "version_0",
        "version_1",
    ]
    assert len(list((chdir_tmp / "exp/logs/version_1").glob("events.out.tfevents.*"))) == 2
    assert reg.get(1).status == "completed"
    assert len(reg.get(1).record["resumes"]) == 1
    # Same weights as the uninterrupted run.
    for a, b in zip(ref.parameters(), second.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_resolve_resume_targets_and_errors(chdir_tmp: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        resolve_resume("nope/last.ckpt")
    with pytest.raises(ConfigError, match=r"no versions yet|does not exist"):
        resolve_resume("latest", default_root=chdir_tmp / "missing")
    reg = Registry("exp")
    run = start_run(reg, _loaded(), display_root="exp", printer=lambda _l: None)
    run.close()
    with pytest.raises(ConfigError, match="no checkpoint"):
        resolve_resume("latest", default_root=Path("exp"))
    (run.checkpoint_dir / "last.ckpt").write_bytes(b"x")
    for target in ("latest", "exp", str(run.checkpoint_dir), str(run.checkpoint_dir / "last.ckpt")):
        got = resolve_resume(target, default_root=Path("exp"))
        assert got.version == 0 and got.checkpoint.name == "last.ckpt", target
    stray = chdir_tmp / "stray.ckpt"
    stray.write_bytes(b"x")
    with pytest.raises(ConfigError, match="not inside a checkpoints/version_N"):
        resolve_resume(stray)


def test_check_resume_changes_names_the_flag() -> None:
    saved = {"model": {"width": 4}, "trainer": {"max_steps": 10}}
    check_resume_changes(
        saved,
        {"model": {"width": 4}, "trainer": {"max_steps": 20}},
        frozen=("model",),
        flags=["--max_steps", "20"],
    )
    with pytest.raises(
        ConfigError, match=r"^--width: cannot change model.width .*saved 4, given 8"
    ):
        check_resume_changes(
            saved,
            {"model": {"width": 8}, "trainer": {"max_steps": 10}},
            frozen=("model",),
            flags=["--width=8"],
        )
    with pytest.raises(ConfigError, match=r"^--model.width:"):
        check_resume_changes(
            saved,
            {"model": {"width": 8}, "trainer": {"max_steps": 10}},
            frozen=("model",),
            flags=[],
        )


def test_global_rank_from_env() -> None:
    assert global_rank_from_env({}) == 0
    assert global_rank_from_env({"RANK": "3"}) == 3
    assert global_rank_from_env({"SLURM_PROCID": "2"}) == 2
    assert global_rank_from_env({"NODE_RANK": "1", "LOCAL_RANK": "1"}, devices_per_node=4) == 5


def test_handed_over_version_is_reused_not_allocated(chdir_tmp: Path) -> None:
    reg = Registry("exp")
    env = {
        RUN_ENV: json.dumps({"root": str(Path("exp").resolve()), "version": 7, "resume": None}),
        "LOCAL_RANK": "1",
    }
    run = start_run(
        reg, _loaded(), printer=lambda _l: pytest.fail("children must not print"), env=env
    )
    assert run.version == 7 and not run.is_global_zero
    assert reg.list() == []
    # A hand-over for another experiment is ignored.
    env[RUN_ENV] = json.dumps({"root": "/elsewhere", "version": 7})
    run = start_run(reg, _loaded(), printer=lambda _l: None, env={**env, "LOCAL_RANK": "0"})
    assert run.version == 0


def test_a_second_start_run_in_one_process_is_a_new_run(chdir_tmp: Path) -> None:
    # A notebook or sweep that retries after an error before fit(): the hand-over the first
    # run left in os.environ (meant for the processes it launches) must not make the
    # second one a silent "rank 1" of the first.
    reg = Registry("exp")
    lines: list[str] = []
    first = start_run(reg, _loaded(), display_root="exp", printer=lines.append)
    assert RUN_ENV in os.environ
    second = start_run(reg, _loaded(), display_root="exp", printer=lines.append)
    try:
        assert (first.version, second.version) == (0, 1)
        assert first.is_global_zero and second.is_global_zero
        assert [v.version for v in reg.list()] == [0, 1]
        assert sum("Experiment version" in line for line in lines) == 2
    finally:
        os.environ.pop(RUN_ENV, None)


def test_rank_zero_clears_a_killed_runs_rendezvous_before_allocating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A relaunch with the same rendezvous key (torchrun's default run id, a fixed port):
    # while rank 0 allocates, the other ranks must not find the killed run's number.
    from versionkit import lightning as vl

    env = {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29511"}
    reg = Registry(tmp_path / "exp")
    key = vl._rendezvous_key(env)
    stale = vl._publish_rendezvous(reg.root, key, {"root": "x", "version": 41, "resume": None})
    seen: list[bool] = []
    real_allocate = reg.allocate

    def allocate(**kwargs: Any) -> Any:
        seen.append(stale.exists())
        return real_allocate(**kwargs)

    monkeypatch.setattr(reg, "allocate", allocate)
    run = start_run(reg, _loaded(), printer=lambda _l: None, env=env)
    try:
        assert seen == [False]
        assert json.loads(stale.read_text())["version"] == run.version == 0
        ranked = start_run(
            Registry(tmp_path / "exp"), _loaded(), printer=lambda _l: None,
            env={**env, "RANK": "1"}, rendezvous_timeout=10,
        )
        assert ranked.version == 0 and not ranked.is_global_zero
    finally:
        run.close()


def _rank_worker(root: str, rank: int, port: str, out: Any, done: Any) -> None:
    env = {
        "RANK": str(rank),
        "WORLD_SIZE": "3",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": port,
        "TORCHELASTIC_RUN_ID": "t1",
    }
    try:
        run = start_run(
            Registry(root), _loaded(), printer=lambda _l: None, env=env, rendezvous_timeout=180
        )
    except Exception as exc:  # reported to the test, which fails with it
        out.put((rank, f"{type(exc).__name__}: {exc}"))
        return
    out.put((rank, run.version))
    if rank == 0:
        # As in training: rank 0 ends (and removes the rendezvous file) only after the
        # other ranks have joined.
        done.wait(300)
        run.close()


@pytest.mark.slow
def test_torchrun_style_ranks_share_one_allocation(tmp_path: Path) -> None:
    """Ranks started at once (torchrun/srun): rank 0 allocates, the others wait and agree."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    root = str(tmp_path / "exp")
    Registry(root).allocate()  # an earlier version, so the run gets 1
    done = ctx.Event()
    procs = [
        ctx.Process(target=_rank_worker, args=(root, r, "29911", out, done)) for r in (2, 1, 0)
    ]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=300) for _ in procs)
    done.set()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert results == {0: 1, 1: 1, 2: 1}
    assert [v.version for v in Registry(root).list()] == [0, 1]


def test_rendezvous_timeout_is_a_clear_error(tmp_path: Path) -> None:
    env = {"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"}
    with pytest.raises(RegistryError, match="rank 1 waited 0 s for global rank 0"):
        start_run(Registry(tmp_path / "exp"), _loaded(), env=env, rendezvous_timeout=0.2)


_CRASH_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, torch
    from versionkit.lightning import AtomicCheckpointIO

    real_save = torch.save

    def dying_save(obj, f, *a, **k):
        f.write(b"PARTIAL" * 1000)
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    torch.save = dying_save
    AtomicCheckpointIO().save_checkpoint({"w": torch.zeros(3)}, sys.argv[1])
    """
)


@pytest.mark.slow
def test_checkpoint_never_half_written_on_crash(tmp_path: Path) -> None:
    target = tmp_path / "ck" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"w": torch.ones(2)}, target)
    proc = subprocess.run(
        [sys.executable, "-c", _CRASH_SCRIPT, str(target)],
        check=False,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.returncode == -signal.SIGKILL
    # The old checkpoint is intact under the final name; the partial bytes never got there.
    blob = AtomicCheckpointIO().load_checkpoint(target)
    torch.testing.assert_close(blob["w"], torch.ones(2))
    assert [p.name for p in target.parent.iterdir() if not p.name.startswith(".")] == ["last.ckpt"]


def test_progress_bar_shows_the_version_number(chdir_tmp: Path) -> None:
    from versionkit.lightning import VersionProgressBar

    Registry("exp").allocate()
    Registry("exp").allocate()
    run = start_run(Registry("exp"), _loaded(), printer=lambda _l: None)
    model = Toy()
    train, val = _loaders()
    trainer = run.trainer(
        max_steps=2,
        val_check_interval=2,
        check_val_every_n_epoch=None,
        accelerator="cpu",
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )
    bars = [c for c in trainer.callbacks if isinstance(c, VersionProgressBar)]
    assert len(bars) == 1
    run.fit(trainer, model, train, val)
    assert bars[0].get_metrics(trainer, model)["v_num"] == 2


_SIGTERM_SCRIPT = textwrap.dedent(
    """
    import sys, time, warnings
    from pathlib import Path
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset
    import pytorch_lightning as pl
    from versionkit.config import ConfigModel, LoadedConfig
    from versionkit.lightning import start_run
    from versionkit.registry import Registry

    warnings.simplefilter("ignore")

    class Cfg(ConfigModel):
        x: int = 1

    class Slow(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Linear(2, 1)
        def training_step(self, batch, batch_idx):
            if batch_idx == 2:
                Path(sys.argv[2]).write_text("started")
            time.sleep(0.05)
            return self.net(batch[0]).pow(2).mean()
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    run = start_run(Registry(sys.argv[1]), LoadedConfig(Cfg(), None, None, [], {}))
    ds = TensorDataset(torch.randn(64, 2))
    trainer = run.trainer(max_steps=100000, accelerator="cpu", enable_progress_bar=False,
                          enable_model_summary=False, limit_val_batches=0, logger_kwargs={})
    run.fit(trainer, Slow(), DataLoader(ds, batch_size=4))
    """
)


@pytest.mark.slow
def test_sigterm_marks_the_version_interrupted(tmp_path: Path) -> None:
    import time

    marker = tmp_path / "started"
    env = {k: v for k, v in os.environ.items() if k != RUN_ENV}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    log = tmp_path / "stderr.txt"
    with (
        log.open("w") as err,
        subprocess.Popen(
            [sys.executable, "-c", _SIGTERM_SCRIPT, str(tmp_path / "exp"), str(marker)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        ) as proc,
    ):
        try:
            deadline = time.monotonic() + 120
            while not marker.exists():
                assert proc.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, "the training never started"
                time.sleep(0.1)
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    info = Registry(tmp_path / "exp").get(0)
    assert info.status == "interrupted", (info.status, info.error)
    assert info.error == "terminated (SIGTERM)"


_leaf = st.one_of(st.integers(-3, 3), st.text("ab", max_size=2), st.none())
_section = st.dictionaries(st.sampled_from(["x", "y", "z"]), _leaf, min_size=1)


@settings(max_examples=150, deadline=None)
@given(
    saved=st.fixed_dictionaries({"model": _section, "trainer": _section}),
    new=st.fixed_dictionaries({"model": _section, "trainer": _section}),
)
def test_check_resume_changes_refuses_exactly_frozen_changes(
    saved: dict[str, Any], new: dict[str, Any]
) -> None:
    from versionkit.config import diff_configs

    frozen_changed = [k for k in diff_configs(saved, new) if k.startswith("model.")]
    if frozen_changed:
        with pytest.raises(ConfigError, match=r"cannot change model\."):
            check_resume_changes(saved, new, frozen=("model",))
    else:
        check_resume_changes(saved, new, frozen=("model",))


def test_resuming_a_version_that_is_still_running_is_refused(chdir_tmp: Path) -> None:
    reg = Registry("exp")
    run = start_run(reg, _loaded(), printer=lambda _l: None)  # running, pid = this process
    run.close()
    (run.checkpoint_dir / "last.ckpt").write_bytes(b"x")
    target = resolve_resume("latest", default_root=Path("exp"))
    with pytest.raises(RegistryError, match=r"version 0 of exp is still running \(pid \d+"):
        start_run(reg, _loaded(), resume=target, printer=lambda _l: None)
    reg.set_status(0, "failed", error="crashed")
    again = start_run(reg, _loaded(), resume=target, printer=lambda _l: None)
    again.close()
    assert reg.get(0).status == "running" and reg.get(0).error is None


def test_multi_node_rank_zero_publishes_even_without_world_size(tmp_path: Path) -> None:
    """Lightning's launcher on node 1 (NODE_RANK=1, no WORLD_SIZE) waits for node 0's number."""
    root = tmp_path / "exp"
    env0 = {"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "4242", "NODE_RANK": "0"}
    run0 = start_run(Registry(root), _loaded(), printer=lambda _l: None, env=env0, num_nodes=2)
    env1 = {**env0, "NODE_RANK": "1"}
    run1 = start_run(
        Registry(root),
        _loaded(),
        printer=lambda _l: None,
        env=env1,
        devices_per_node=2,
        rendezvous_timeout=5,
    )
    assert run1.version == run0.version == 0 and run1.rank == 2
    assert [v.version for v in Registry(root).list()] == [0]
    run0.close()
    assert not list((root / ".versionkit" / "rendezvous").glob("*.json"))
