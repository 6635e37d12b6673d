"""versionkit.run: start, resume (validated before any write), the lease, targets."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import Field

from versionkit.config import ConfigModel, ConfigSection, config_hash, load_config
from versionkit.errors import ConfigError
from versionkit.registry import Registry
from versionkit.run import (
    RUN_ENV,
    RunBusyError,
    Target,
    TargetNotFoundError,
    resolve_target,
    start_run,
)

REPO = Path(__file__).resolve().parents[1]
MUTABLE = ("train.max_steps", "train.workers")


class Net(ConfigSection):
    width: int = Field(8, gt=0)
    depth: int = Field(2, gt=0)


class Train(ConfigSection):
    max_steps: int = Field(10, gt=0)
    workers: int = Field(0, ge=0)
    lr: float = Field(1e-3, gt=0)


class Cfg(ConfigModel):
    name: str = "exp"
    net: Net = Field(default_factory=Net)
    train: Train = Field(default_factory=Train)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(RUN_ENV, raising=False)
    monkeypatch.delenv("VERSIONKIT_BACKEND", raising=False)
    monkeypatch.chdir(tmp_path)


def load(*argv: str) -> Any:
    return load_config(Cfg, list(argv))


def lines_of(fn: Any) -> tuple[Any, list[str]]:
    out: list[str] = []
    result = fn(out.append)
    return result, out


def new_run(reg: Registry, *argv: str, **kw: Any) -> Any:
    run = start_run(reg, load(*argv), display_root="outputs/exp", printer=lambda _s: None, **kw)
    return run


def snapshot(reg: Registry, n: int) -> tuple[dict[str, Any], bytes]:
    return reg.get(n).record, reg.checkpoint_dir(n).joinpath("config.yaml").read_bytes()


def fake_checkpoint(reg: Registry, n: int, name: str = "last.ckpt") -> Path:
    path = reg.checkpoint_dir(n) / name
    path.write_bytes(b"weights")
    return path


# -- a new run -----------------------------------------------------------------------------


def test_new_run_prints_the_four_lines_and_saves_the_config_once(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("net:\n  width: 4\n")
    reg = Registry("outputs/exp")
    loaded = load("--config", "c.yaml", "--max_steps", "3")
    run, out = lines_of(lambda p: start_run(reg, loaded, display_root="outputs/exp", printer=p,
                                            extra={"sweep": {"trial": 3}}))
    assert out == [
        "✓ Experiment version: 0",
        "✓ Checkpoint dir: outputs/exp/checkpoints/version_0",
        "✓ Saved config from: c.yaml",
        "✓ Config saved to: outputs/exp/checkpoints/version_0/config.yaml",
    ]
    text = run.config_path.read_text()
    assert text.startswith(
        "# Resolved config of experiment version 0 (every field, defaults included).\n"
        "# Config file: c.yaml (verbatim copy: config.source.yaml)\n"
        "# Flags: --max_steps 3\n"
        "schema_version: 1\n"
    )
    assert (run.checkpoint_dir / "config.source.yaml").read_text() == cfg.read_text()
    info = reg.get(0)
    assert info.config_hash == config_hash(loaded.config)
    assert info.record["sweep"] == {"trial": 3} and info.record["flags"] == ["--max_steps", "3"]
    lease = info.record["lease"]
    assert lease["pid"] == os.getpid() and lease["host"] == socket.gethostname()
    assert os.environ[RUN_ENV]  # handed to the processes a launcher starts
    run.finish("completed")
    run.finish("failed", error="late")  # the first call wins
    info = reg.get(0)
    assert info.status == "completed" and info.record["lease"] is None and info.error is None
    assert RUN_ENV not in os.environ


def test_flags_only_run_says_so() -> None:
    reg = Registry("outputs/exp")
    _, out = lines_of(lambda p: start_run(reg, load("--width", "3"), printer=p))
    assert out[2] == "✓ Config generated from command-line flags"
    assert "# Config generated from command-line flags (no config file)\n# Flags: --width 3\n" in (
        reg.checkpoint_dir(0) / "config.yaml"
    ).read_text()


def test_finish_rejects_an_unknown_status() -> None:
    run = new_run(Registry("outputs/exp"))
    with pytest.raises(ValueError, match="status must be one of"):
        run.finish("done")


# -- resume ----------------------------------------------------------------------------------


@pytest.fixture
def done(tmp_path: Path) -> Registry:
    """Version 0, trained with --lr 5e-4 --max_steps 4, completed, with a last.ckpt."""
    (tmp_path / "c.yaml").write_text("net:\n  width: 4\n")
    reg = Registry("outputs/exp")
    run = new_run(reg, "--config", "c.yaml", "--lr", "5e-4", "--max_steps", "4")
    fake_checkpoint(reg, 0)
    run.finish("completed")
    return reg


def resume(reg: Registry, *argv: str, **kw: Any) -> tuple[Any, list[str]]:
    target = resolve_target("outputs/exp", backend=None)
    return lines_of(lambda p: start_run(reg, load(*argv), display_root="outputs/exp", resume=target,
                                        printer=p, mutable_on_resume=MUTABLE, **kw))


def test_resume_keeps_the_saved_config_and_records_allowed_changes(done: Registry) -> None:
    before_record, before_yaml = snapshot(done, 0)
    run, out = resume(done, "--max_steps", "9")
    assert out == [
        "✓ Resuming experiment version: 0",
        "✓ Checkpoint dir: outputs/exp/checkpoints/version_0",
        "✓ Resuming from: outputs/exp/checkpoints/version_0/last.ckpt",
        "✓ Saved config (unchanged): outputs/exp/checkpoints/version_0/config.yaml",
        "✓ Changed for this resume: train.max_steps: 4 -> 9",
    ]
    # This process trains with the saved lr and the new budget...
    assert run.config.train.lr == 5e-4 and run.config.train.max_steps == 9
    assert run.config.net.width == 4  # from the saved config, not the schema default
    # ...while the saved config and the record's config say what version 0 was started with.
    record, yaml_bytes = snapshot(done, 0)
    assert yaml_bytes == before_yaml
    assert record["config"] == before_record["config"]
    assert record["config_hash"] == before_record["config_hash"]
    assert record["status"] == "running" and record["lease"]["pid"] == os.getpid()
    (entry,) = record["resumes"]
    assert entry["changes"] == {"train.max_steps": [4, 9]}
    assert entry["flags"] == ["--max_steps", "9"]
    run.finish("completed")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--width", "16"], "--width: cannot change net.width when resuming (saved 4, given 16)"),
        (["--config", "c.yaml", "--max_steps", "9"], "--config c.yaml: cannot change train.lr"),
        (["--lr=0.1"], "--lr: cannot change train.lr"),
    ],
)
def test_a_refused_resume_changes_nothing(done: Registry, argv: list[str], message: str) -> None:
    before = snapshot(done, 0)
    with pytest.raises(ConfigError) as caught:
        resume(done, *argv)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)
    assert snapshot(done, 0) == before
    assert caught.value.exit_code == 2


def test_check_resume_refusal_changes_nothing(done: Registry) -> None:
    before = snapshot(done, 0)
    seen: list[tuple[Target, Any]] = []

    def check(target: Target, config: Any) -> None:
        seen.append((target, config))
        raise ConfigError("the checkpoint is of another model: net.w has shape [3] vs [4]")

    with pytest.raises(ConfigError, match="another model"):
        resume(done, "--max_steps", "9", check_resume=check)
    assert seen[0][0].version == 0 and seen[0][1].train.max_steps == 9
    assert snapshot(done, 0) == before


def test_the_same_config_file_is_accepted(done: Registry, tmp_path: Path) -> None:
    saved = done.checkpoint_dir(0) / "config.yaml"
    run, _out = resume(done, "--config", str(saved), "--max_steps", "5")
    assert run.config.train.lr == 5e-4 and run.changes == {"train.max_steps": (4, 5)}
    run.finish("completed")


# -- the lease ---------------------------------------------------------------------------------


def _sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def _set_lease(reg: Registry, n: int, **lease: Any) -> None:
    reg.backend.modify(n, lambda _r: {"status": "running", "lease": lease})


def test_a_live_holder_is_named_and_a_dead_one_is_taken_over(done: Registry) -> None:
    holder = _sleeper()
    try:
        _set_lease(done, 0, host=socket.gethostname(), pid=holder.pid, token="x", heartbeat=0)
        before = snapshot(done, 0)
        with pytest.raises(RunBusyError) as caught:
            resume(done, "--max_steps", "9")
        assert f"pid {holder.pid} on host {socket.gethostname()}" in str(caught.value)
        assert snapshot(done, 0) == before
    finally:
        holder.kill()
        holder.wait()
    run, out = resume(done, "--max_steps", "9")  # the holder is gone: taken over
    assert out[0] == "✓ Resuming experiment version: 0"
    assert done.get(0).record["lease"]["token"] != "x"
    run.finish("interrupted")


def test_another_hosts_lease_lives_as_long_as_its_heartbeat(done: Registry) -> None:
    _set_lease(done, 0, host="elsewhere", pid=1, token="x", heartbeat=time.time())
    with pytest.raises(RunBusyError, match="pid 1 on host elsewhere"):
        resume(done, "--max_steps", "9")
    _set_lease(done, 0, host="elsewhere", pid=1, token="x", heartbeat=time.time() - 3600)
    run, _ = resume(done, "--max_steps", "9")
    run.finish("completed")


def test_heartbeat_refreshes_and_notices_a_takeover(done: Registry) -> None:
    from versionkit.run import LeaseLost

    run, _ = resume(done, "--max_steps", "9", heartbeat_interval=0.0)
    first = done.get(0).record["lease"]["heartbeat"]
    time.sleep(0.01)
    run.heartbeat()
    assert done.get(0).record["lease"]["heartbeat"] > first
    _set_lease(done, 0, host="elsewhere", pid=1, token="thief", heartbeat=time.time())
    with pytest.raises(LeaseLost, match="taken over"):
        run.heartbeat()
    run.finish("failed")
    assert done.get(0).record["lease"]["token"] == "thief"  # not ours to release


_RESUMER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from test_run import Cfg, MUTABLE
    from versionkit.config import load_config
    from versionkit.registry import Registry
    from versionkit.run import RunBusyError, resolve_target, start_run
    go = Path(sys.argv[2])
    while not go.exists():
        time.sleep(0.005)
    reg = Registry("outputs/exp", sys.argv[1])
    target = resolve_target("outputs/exp", backend=sys.argv[1])
    try:
        run = start_run(reg, load_config(Cfg, ["--max_steps", "9"]), resume=target,
                        mutable_on_resume=MUTABLE, printer=lambda s: None)
    except RunBusyError as exc:
        print("busy:", exc)
        sys.exit(1)
    print("running", flush=True)
    deadline = time.monotonic() + 60
    while not go.with_name("release").exists() and time.monotonic() < deadline:
        time.sleep(0.01)  # hold the version until the test has seen the other one refused
    run.finish("completed")
    """
)


@pytest.mark.parametrize("backend", ["file", "sqlite"])
def test_two_resumes_started_together_exactly_one_runs(
    tmp_path: Path, backend: str
) -> None:
    uri = "file" if backend == "file" else f"sqlite:///{tmp_path}/reg.db"
    (tmp_path / "c.yaml").write_text("net:\n  width: 4\n")
    reg = Registry("outputs/exp", uri)
    run = start_run(reg, load("--config", "c.yaml"), printer=lambda _s: None)
    fake_checkpoint(reg, 0)
    run.finish("interrupted")
    script = tmp_path / "resumer.py"
    script.write_text(_RESUMER.format(tests=str(REPO / "tests")))
    env = {k: v for k, v in os.environ.items() if k != RUN_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    go = tmp_path / "go"
    procs = [
        subprocess.Popen([sys.executable, str(script), uri, str(go)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    time.sleep(0.5)  # both imported and waiting: release them together
    go.touch()
    deadline = time.monotonic() + 60
    while all(p.poll() is None for p in procs) and time.monotonic() < deadline:
        time.sleep(0.01)  # one of them must give up while the other holds the version
    (tmp_path / "release").touch()
    results = [p.communicate(timeout=60) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 1], results
    busy = next(out for out, _ in results if out.startswith("busy:"))
    assert "version 0 is already running (pid " in busy and socket.gethostname() in busy
    info = Registry("outputs/exp", uri).get(0)
    assert info.status == "completed" and len(info.record["resumes"]) == 1


# -- targets -------------------------------------------------------------------------------------


@pytest.fixture
def exp(tmp_path: Path) -> Registry:
    """Versions 0 (best val_loss 0.5 at step 2, worse 0.9 at step 4) and 1 (0.7), tag 'keep'."""
    reg = Registry("outputs/exp")
    for n, losses in enumerate([(0.5, 0.9), (0.7,)]):
        run = new_run(reg)
        for i, loss in enumerate(losses):
            step = 2 * (i + 1)
            path = fake_checkpoint(reg, n, f"step_{step:08d}-val_loss_{loss:.4f}.ckpt")
            run.record_checkpoint(path, step=step, metrics={"val_loss": loss})
        fake_checkpoint(reg, n)
        run.finish("completed")
    (tmp_path / "outputs" / "other" / "checkpoints").mkdir(parents=True)
    return reg


def test_every_spelling_resolves(exp: Registry) -> None:
    ck0 = Path("outputs/exp/checkpoints/version_0")
    best0 = ck0 / "step_00000002-val_loss_0.5000.ckpt"
    assert resolve_target(str(best0)) == Target(Path("outputs/exp"), 0, best0)
    assert resolve_target(str(ck0)) == Target(Path("outputs/exp"), 0, ck0 / "last.ckpt")
    assert resolve_target(str(ck0), want_checkpoint="best").checkpoint == best0
    assert resolve_target("outputs/exp/logs/version_0").version == 0
    assert resolve_target("outputs/exp").version == 1
    assert resolve_target("latest", default_root=Path("outputs/exp")).version == 1
    assert resolve_target("outputs/exp@0").checkpoint == ck0 / "last.ckpt"
    assert resolve_target("outputs/exp@latest").version == 1
    # best over the experiment: version 0's step 2 (not its worse, later step 4)
    assert resolve_target("outputs/exp@best", want_checkpoint="best").checkpoint == best0
    assert resolve_target("outputs/exp@best").checkpoint == ck0 / "last.ckpt"


def test_tags_come_from_the_registry_meta(exp: Registry) -> None:
    exp.backend.modify_meta(lambda meta: {"tags": {"keep": 0}})
    assert resolve_target("outputs/exp@keep").version == 0
    assert resolve_target("outputs/exp@keep", want_checkpoint="best").checkpoint == Path(
        "outputs/exp/checkpoints/version_0/step_00000002-val_loss_0.5000.ckpt"
    )
    with pytest.raises(TargetNotFoundError, match=r"no tag 'nope' .*tags: keep"):
        resolve_target("outputs/exp@nope")


@pytest.mark.parametrize(
    ("text", "kind", "needle"),
    [
        ("latest", ConfigError, "no experiment is known"),
        ("outputs/exp@", ConfigError, "nothing after '@'"),
        ("outputs/exp@7", TargetNotFoundError, "has no version 7 (versions: 0, 1)"),
        ("outputs/nope@3", TargetNotFoundError, "experiments under outputs: exp, other"),
        ("outputs/nope", TargetNotFoundError, "experiments under outputs: exp, other"),
        ("outputs/exp/checkpoints/version_0/config.yaml", ConfigError, "not a checkpoint"),
        ("outputs", ConfigError, "neither an experiment folder"),
        ("outputs/other", TargetNotFoundError, "has no versions yet"),
    ],
)
def test_bad_targets_say_what_exists(exp: Registry, text: str, kind: type, needle: str) -> None:
    with pytest.raises(kind) as caught:
        resolve_target(text)
    assert needle in str(caught.value)
    assert caught.value.exit_code == (3 if kind is TargetNotFoundError else 2)


def test_latest_of_a_missing_experiment_lists_the_others(exp: Registry) -> None:
    with pytest.raises(TargetNotFoundError, match="experiments under outputs: exp, other"):
        resolve_target("latest", default_root=Path("outputs/fractalgen"))


def test_a_checkpoint_outside_a_version_folder_is_refused(tmp_path: Path) -> None:
    stray = tmp_path / "stray.ckpt"
    stray.write_bytes(b"x")
    with pytest.raises(ConfigError, match="version it belongs to is unknown"):
        resolve_target(str(stray))


# -- ranks ---------------------------------------------------------------------------------------


def test_a_launched_rank_gets_rank_zeros_version_and_writes_nothing(done: Registry) -> None:
    run, _ = resume(done, "--max_steps", "9")
    handed = {RUN_ENV: os.environ[RUN_ENV].replace(f'"owner": {os.getpid()}', '"owner": -5'),
              "LOCAL_RANK": "1"}
    before = snapshot(done, 0)
    target = resolve_target("outputs/exp")
    child = start_run(done, load("--max_steps", "9"), resume=target, env=handed,
                      mutable_on_resume=MUTABLE, printer=lambda s: pytest.fail(s))
    assert (child.version, child.rank, child.is_global_zero) == (0, 1, False)
    assert child.config.train.max_steps == 9 and child.resume_from == run.resume_from
    child.log_metrics({"val_loss": 1.0}, step=3)
    child.finish("failed")
    assert snapshot(done, 0) == before
    run.finish("completed")


def test_a_pruned_run_keeps_its_files_and_says_so(done: Registry) -> None:
    run, _ = resume(done, "--max_steps", "9")
    run.finish("pruned")
    info = done.get(0)
    assert info.status == "pruned" and info.record["lease"] is None
    assert (done.checkpoint_dir(0) / "last.ckpt").is_file()


def test_checkpoints_and_logs_may_be_symlinks_to_a_bigger_disk(tmp_path: Path) -> None:
    root = Path("outputs/exp")
    big = tmp_path / "big_disk"
    for sub in ("checkpoints", "logs"):
        (big / sub).mkdir(parents=True)
    root.mkdir(parents=True)
    for sub in ("checkpoints", "logs"):
        (root / sub).symlink_to(big / sub)
    reg = Registry(root)
    run = new_run(reg)
    assert (big / "checkpoints" / "version_0" / "config.yaml").is_file()
    path = fake_checkpoint(reg, 0, "step_00000002-val_loss_0.5000.ckpt")
    run.record_checkpoint(path, step=2, metrics={"val_loss": 0.5})
    run.finish("completed")
    assert resolve_target("outputs/exp", want_checkpoint="best").checkpoint == path
    shown = "outputs/exp/checkpoints/version_0/step_00000002-val_loss_0.5000.ckpt"
    assert run.display(path) == shown


_FLAGS = {
    "train.max_steps": ("--max_steps", st.integers(1, 50)),
    "train.workers": ("--workers", st.integers(0, 8)),
    "train.lr": ("--lr", st.sampled_from([1e-3, 5e-4, 0.1])),
    "net.width": ("--width", st.integers(1, 9)),
}


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_resume_config_changes_only_mutable_fields_and_refuses_the_rest(data: Any) -> None:
    """Whatever flags a resume gives: the result is the saved config with exactly the
    flagged mutable fields changed, or one ConfigError naming a flagged frozen field."""
    from versionkit.run import resume_config

    saved = load("--width", "4", "--lr", "5e-4", "--max_steps", "4").config
    keys = data.draw(st.lists(st.sampled_from(sorted(_FLAGS)), unique=True, max_size=4))
    values = {k: data.draw(_FLAGS[k][1]) for k in keys}
    argv = [str(t) for k in keys for t in (_FLAGS[k][0], values[k])]
    saved_plain = saved.model_dump(mode="json")
    frozen = {k for k in keys if k not in MUTABLE and values[k] != _get(saved_plain, k)}
    if frozen:
        with pytest.raises(ConfigError) as caught:
            resume_config(load(*argv), saved, mutable=MUTABLE)
        assert any(str(caught.value).startswith(f"{_FLAGS[k][0]}: cannot change {k}")
                   for k in frozen)
        return
    result = resume_config(load(*argv), saved, mutable=MUTABLE).config.model_dump(mode="json")
    for key in ("net.width", "net.depth", "train.max_steps", "train.workers", "train.lr"):
        expected = values[key] if key in values else _get(saved_plain, key)
        assert _get(result, key) == expected, key


def _get(plain: dict[str, Any], key: str) -> Any:
    section, leaf = key.split(".")
    return plain[section][leaf]
