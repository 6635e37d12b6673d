"""Sweeps with real worker processes, on a torch-free objective (fast).

The objective allocates one registry version per trial (as a training run does) and
returns a number; this file is also the worker script the tests start
(``python tests/test_sweep_workers.py ROOT STUDY STORAGE TRIALS JOBS [SAMPLER]``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import Field, model_validator

from versionkit.config import ConfigModel, LoadedConfig, load_config

HERE = Path(__file__).resolve()


class ToyConfig(ConfigModel):
    """A stand-in for a training config."""

    root: str = "out"
    x: float = 0.0
    width: int = 8
    sizes: list[int] = Field(default_factory=lambda: [1, 2])
    sleep: float = 0.0
    wait_workers: int = 0
    registry: str | None = None
    even_width: bool = False

    @model_validator(mode="after")
    def _even(self) -> ToyConfig:
        if self.even_width and self.width % 2:
            raise ValueError(f"width must be even, given {self.width}")
        return self


def parse(argv: list[str]) -> LoadedConfig[ToyConfig]:
    return load_config(ToyConfig, argv)


def _barrier(config: ToyConfig) -> None:
    """No trial ends before ``wait_workers`` workers each hold one, so a test of workers
    started together sees them all take part however slowly each starts."""
    if not config.wait_workers:
        return
    (Path(config.root) / f"worker_{os.getpid()}").touch()
    deadline = time.monotonic() + 90
    while len(list(Path(config.root).glob("worker_*"))) < config.wait_workers:
        assert time.monotonic() < deadline, "the other workers never took a trial"
        time.sleep(0.05)


def objective(ctx: Any) -> float:
    """One 'run': a version whose record holds the trial, then a number."""
    from versionkit.registry import Registry

    config = ctx.loaded.config
    registry = Registry(config.root, config.registry)
    info = registry.allocate(config=config.model_dump(mode="json"), extra=ctx.extra)
    ctx.print(f"✓ Experiment version: {info.version}")
    ctx.link(info.version, info.checkpoint_dir)
    marker = Path(config.root) / f"started_{ctx.number}"
    marker.write_text(str(os.getpid()))
    _barrier(config)
    time.sleep(config.sleep)
    if config.x < 0:
        registry.set_status(info.version, "failed", error="negative x")
        raise RuntimeError("negative x")
    registry.set_status(info.version, "completed")
    return (config.x - 0.3) ** 2 + config.width / 1000


#: a module nothing else here imports: preloaded by the forkserver, or not
PROBE_MODULE = "wave"


def probe(ctx: Any) -> float:
    """What a worker holds when its trial starts: is the preloaded module already
    imported, which environment does it see, which process is it."""
    Path(ctx.loaded.config.root, f"probe_{ctx.number}.json").write_text(json.dumps({
        "pid": os.getpid(), "preloaded": PROBE_MODULE in sys.modules,
        "env": os.environ.get("VK_SWEEP_PROBE"), "cwd": os.getcwd(),
        "threads": os.environ.get("OMP_NUM_THREADS"),
    }))
    _barrier(ctx.loaded.config)
    return float(ctx.loaded.config.x)


def _probe_main(argv: list[str]) -> int:
    """``--probe ROOT METHOD``: 2 trials on 2 jobs; the environment changes after the
    first sweep started the forkserver, so the second sweep's workers must see the new
    value."""
    import dataclasses

    from versionkit.sweep import run_sweep

    root, method = Path(argv[0]), argv[1]
    codes = []
    for study in ("first", "second"):
        os.environ["VK_SWEEP_PROBE"] = study
        folder = root / study
        folder.mkdir()
        sweep = dataclasses.replace(make_sweep(folder, study, None, 2, "random",
                                               ("x=uniform(0,1)",), ("--wait_workers=2",)),
                                    objective=probe, preload=(PROBE_MODULE,))
        codes.append(run_sweep(sweep, jobs=2, start_method=method))
    return max(codes)


def make_sweep(root: Path, study: str, storage: str | None, trials: int, sampler: str = "tpe",
               spaces: tuple[str, ...] = ("x=uniform(0,1)", "width=int(4,16)"),
               base: tuple[str, ...] = ()) -> Any:
    from versionkit.sweep import SearchSpace, Sweep, parse_storage

    space = SearchSpace.parse(list(spaces), ToyConfig)
    args = (f"--root={root}", *base)
    return Sweep(
        study=study,
        storage=parse_storage(storage, default_journal=root / ".versionkit" / "sweeps.journal"),
        space=space, trials=trials, schema=ToyConfig, parse=parse, objective=objective,
        base_args=args, sampler=sampler,  # type: ignore[arg-type]
    )


def _worker_main(argv: list[str]) -> int:
    from versionkit.sweep import run_sweep

    if os.environ.get("VK_TEST_HEARTBEAT"):
        # A database heartbeat test cannot wait a minute: beat every second, 3 s grace.
        import versionkit.sweep.storage as storage_module

        storage_module.HEARTBEAT_INTERVAL_S, storage_module.HEARTBEAT_GRACE_S = 1, 3
    if os.environ.get("VK_TEST_HOST"):
        # This worker claims to run on another machine, so no worker here can tell from
        # its pid that it died: only the database heartbeat can.
        import versionkit.sweep.runner as runner_module

        fake = os.environ["VK_TEST_HOST"]
        runner_module.socket.gethostname = lambda: fake  # type: ignore[attr-defined]

    root, study, storage, trials, jobs, *rest = argv
    sampler = rest[0] if rest else "tpe"
    extra = tuple(rest[1:])
    spaces = ("x=choice(0.1,0.2,0.3)", "width=choice(4,8)") if sampler == "grid" else (
        "x=uniform(0,1)", "width=int(4,16)")
    sweep = make_sweep(Path(root), study, None if storage == "-" else storage, int(trials),
                       sampler, spaces, extra)
    return run_sweep(sweep, jobs=int(jobs))


# ------------------------------------------------------------------------------ helpers


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(HERE.parent.parent)
    return env


def _start(root: Path, study: str, storage: str, trials: int, jobs: int = 1,
           *rest: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(HERE), str(root), study, storage, str(trials), str(jobs), *rest],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**_env(), **(env or {})},
    )


def _trials(storage: str, study: str) -> list[Any]:
    import optuna

    if "://" not in storage:
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        return optuna.load_study(
            study_name=study, storage=JournalStorage(JournalFileBackend(storage))
        ).get_trials()
    rdb = optuna.storages.RDBStorage(storage)
    try:
        return optuna.load_study(study_name=study, storage=rdb).get_trials()
    finally:
        rdb.engine.dispose()


def _versions(root: Path, backend: str | None = None) -> list[Any]:
    from versionkit.registry import Registry

    with Registry(root, backend) as registry:
        return registry.list()


def _pg_optuna_url(uri: str) -> str:
    return uri.replace("postgresql://", "postgresql+psycopg://", 1)


# ------------------------------------------------------------------------------ tests


@pytest.mark.slow
def test_two_workers_started_together_on_one_journal_run_exactly_the_trials(
    tmp_path: Path,
) -> None:
    journal = tmp_path / "study.journal"
    workers = [
        _start(tmp_path, "s1", str(journal), 7, 1, "tpe", "--wait_workers=2") for _ in range(2)
    ]
    outs = [w.communicate(timeout=120)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outs
    trials = _trials(str(journal), "s1")
    assert len(trials) == 7
    assert all(t.state.name == "COMPLETE" for t in trials)
    versions = [t.user_attrs["version"] for t in trials]
    assert len(set(versions)) == 7
    records = _versions(tmp_path)
    assert sorted(v.version for v in records) == sorted(versions)
    assert sorted(v.record["sweep"]["trial"] for v in records) == list(range(7))
    for t in trials:
        assert 0 <= t.params["x"] <= 1 and 4 <= t.params["width"] <= 16
    # both workers took trials (the objective's barrier makes sure they overlap)
    assert all("✓ Experiment version" in out for out in outs), outs


@pytest.mark.slow
@pytest.mark.postgres
def test_two_workers_on_one_postgres_study_and_registry(tmp_path: Path, pg_uri: str) -> None:
    storage = _pg_optuna_url(pg_uri)
    workers = [
        _start(tmp_path, "pg", storage, 6, 1, "tpe", f"--registry={pg_uri}", "--wait_workers=2")
        for _ in range(2)
    ]
    outs = [w.communicate(timeout=120)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outs
    trials = _trials(storage, "pg")
    assert len(trials) == 6 and all(t.state.name == "COMPLETE" for t in trials)
    versions = [t.user_attrs["version"] for t in trials]
    assert len(set(versions)) == 6
    records = _versions(tmp_path, pg_uri)
    assert sorted(v.record["sweep"]["trial"] for v in records) == list(range(6))
    assert {v.version for v in records} == set(versions)
    assert all("✓ Experiment version" in out for out in outs), outs


@pytest.mark.slow
def test_grid_runs_every_combination_exactly_once_with_two_jobs(tmp_path: Path) -> None:
    journal = tmp_path / "grid.journal"
    worker = _start(tmp_path, "g", str(journal), 6, 2, "grid")
    out = worker.communicate(timeout=120)[0]
    assert worker.returncode == 0, out
    trials = _trials(str(journal), "g")
    combos = sorted((t.params["x"], t.params["width"]) for t in trials)
    assert combos == sorted((x, w) for x in (0.1, 0.2, 0.3) for w in (4, 8))


@pytest.mark.slow
def test_a_killed_worker_leaves_a_fail_trial_and_the_sweep_resumes(tmp_path: Path) -> None:
    journal = tmp_path / "kill.journal"
    victim = _start(tmp_path, "k", str(journal), 3, 1, "tpe", "--sleep=30")
    marker = tmp_path / "started_0"
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert victim.poll() is None, victim.communicate()[0]
        assert time.monotonic() < deadline
        time.sleep(0.1)
    os.kill(victim.pid, signal.SIGKILL)
    victim.communicate()
    before = _trials(str(journal), "k")
    assert [t.state.name for t in before] == ["RUNNING"]
    killed_x = before[0].params["x"]
    again = _start(tmp_path, "k", str(journal), 3, 1, "tpe", "--sleep=0")
    out = again.communicate(timeout=120)[0]
    assert again.returncode == 0, out
    trials = _trials(str(journal), "k")
    states = [t.state.name for t in trials]
    assert states[0] == "FAIL" and states.count("COMPLETE") == 3, states
    # the killed trial's values ran again, in the trial right after it
    assert trials[1].params["x"] == killed_x
    assert "its worker (pid" in out


@pytest.mark.slow
@pytest.mark.postgres
def test_a_worker_killed_on_another_node_is_failed_by_the_database_heartbeat(
    tmp_path: Path, pg_uri: str
) -> None:
    """SIGKILL leaves the trial RUNNING. With no worker on the dead one's host to notice,
    Optuna's heartbeat turns the trial FAIL and queues its values again (intervals
    shortened by the worker script: 1 s beats, 3 s grace)."""
    storage = _pg_optuna_url(pg_uri)
    beat = {"VK_TEST_HEARTBEAT": "1"}
    victim = _start(tmp_path, "hb", storage, 2, 1, "tpe", f"--registry={pg_uri}",
                    "--sleep=60", env={**beat, "VK_TEST_HOST": "node-b"})
    deadline = time.monotonic() + 60
    while not (tmp_path / "started_0").exists():
        assert victim.poll() is None, victim.communicate()[0]
        assert time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(1.5)  # at least one beat recorded
    os.kill(victim.pid, signal.SIGKILL)
    victim.communicate()
    (killed,) = _trials(storage, "hb")
    assert killed.state.name == "RUNNING" and killed.user_attrs["worker"].startswith("node-b:")
    time.sleep(4)  # past the grace period
    again = _start(tmp_path, "hb", storage, 2, 1, "tpe", f"--registry={pg_uri}", "--sleep=0",
                   env=beat)
    out = again.communicate(timeout=120)[0]
    assert again.returncode == 0, out
    trials = _trials(storage, "hb")
    states = [t.state.name for t in trials]
    assert states[0] == "FAIL" and states.count("COMPLETE") == 2, states
    assert "its worker (pid" not in out  # not this host's dead-pid path
    # the killed trial's values were queued again and ran
    assert killed.params["x"] in [t.params["x"] for t in trials[1:]]


@pytest.mark.slow
def test_ctrl_c_stops_the_workers_marks_their_trials_interrupted_and_a_rerun_continues(
    tmp_path: Path,
) -> None:
    journal = tmp_path / "int.journal"
    parent = _start(tmp_path, "i", str(journal), 3, 2, "tpe", "--sleep=30")
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"started_{n}").exists() for n in (0, 1)):
        assert parent.poll() is None, parent.communicate()[0]
        assert time.monotonic() < deadline
        time.sleep(0.1)
    os.kill(parent.pid, signal.SIGINT)  # the parent only: it passes it on to its workers
    out = parent.communicate(timeout=60)[0]
    assert parent.returncode == 130, out
    stopped = _trials(str(journal), "i")
    assert sorted((t.state.name, t.user_attrs["status"]) for t in stopped[:2]) == [
        ("FAIL", "interrupted"), ("FAIL", "interrupted")]
    # their values are queued, so the same command finishes the study with them
    again = _start(tmp_path, "i", str(journal), 3, 2, "tpe", "--sleep=0")
    out = again.communicate(timeout=120)[0]
    assert again.returncode == 0, out
    trials = _trials(str(journal), "i")
    done = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(done) == 3
    assert {t.params["x"] for t in stopped[:2]} <= {t.params["x"] for t in done}


def test_a_failing_trial_is_failed_on_both_sides_and_the_sweep_goes_on(tmp_path: Path) -> None:
    from versionkit.sweep import format_summary, run_sweep, summary_rows

    storage = f"sqlite:///{tmp_path}/s.db"
    sweep = make_sweep(tmp_path, "f", storage, 3, "grid", ("x=choice(-1.0,0.3,0.5)",))
    assert run_sweep(sweep, jobs=1) == 0
    rows = summary_rows(sweep, sweep.open_study())
    assert [r["status"] for r in rows] == ["completed", "completed", "failed"]
    assert rows[0]["params"] == {"x": 0.3}
    failed = rows[-1]
    assert failed["error"] == "negative x"
    info = {v.version: v for v in _versions(tmp_path)}[failed["version"]] if failed[
        "version"] is not None else None
    assert info is None or info.status == "failed"
    table = format_summary(sweep, rows)
    assert table.splitlines()[0].split() == ["trial", "version", "x", "best", "val_loss",
                                              "status"]
    # a second run continues (nothing left) instead of restarting
    assert run_sweep(sweep, jobs=1) == 0
    assert len(sweep.open_study().get_trials()) == 3


def test_list_values_go_through_the_study_as_json_and_back(tmp_path: Path) -> None:
    from versionkit.sweep import run_sweep

    sweep = make_sweep(tmp_path, "l", None, 2, "grid", ("sizes=choice([1,2],[3,4,5])",))
    assert run_sweep(sweep, jobs=1) == 0
    records = _versions(tmp_path)
    assert sorted(json.dumps(v.record["sweep"]["params"]["sizes"]) for v in records) == [
        "[1, 2]", "[3, 4, 5]"]
    assert sorted(v.record["config"]["sizes"] for v in records) == [[1, 2], [3, 4, 5]]


def test_a_sampled_value_that_breaks_a_cross_field_rule_fails_only_its_trial(
    tmp_path: Path,
) -> None:
    from versionkit.sweep import run_sweep

    # (a grid, so that the odd value surely comes up; the ends of a range were checked)
    sweep = make_sweep(tmp_path, "odd", None, 3, "grid", ("width=choice(4,5,6)",),
                       ("--even_width=true",))
    assert run_sweep(sweep, jobs=1) == 0
    trials = sweep.open_study().get_trials()
    assert sorted(t.params["width"] for t in trials) == [4, 5, 6]
    for t in trials:
        if t.params["width"] % 2:
            assert t.state.name == "FAIL" and t.user_attrs["status"] == "failed"
            assert "width must be even" in t.user_attrs["error"]
        else:
            assert t.state.name == "COMPLETE"


def test_a_study_that_searched_other_fields_is_refused(tmp_path: Path) -> None:
    from versionkit.errors import ConfigError
    from versionkit.sweep import run_sweep

    assert run_sweep(make_sweep(tmp_path, "same", None, 1, "random", ("x=uniform(0,1)",)),
                     jobs=1) == 0
    with pytest.raises(ConfigError, match="searches x; this command searches width"):
        run_sweep(make_sweep(tmp_path, "same", None, 2, "random", ("width=int(4,8)",)), jobs=1)
    assert run_sweep(make_sweep(tmp_path, "ch", None, 1, "grid", ("width=choice(4,8)",)),
                     jobs=1) == 0
    with pytest.raises(ConfigError, match="cannot change a choice's values"):
        run_sweep(make_sweep(tmp_path, "ch", None, 2, "grid", ("width=choice(4,6)",)), jobs=1)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_workers_start_from_a_preloaded_server_with_the_parents_environment(
    tmp_path: Path, method: str
) -> None:
    """The default forkserver imports ``Sweep.preload`` once and forks every worker from
    it (spawn: each worker imports on its own); either way a worker sees the parent's
    environment and working folder as they are when the sweep starts."""
    from versionkit.sweep import worker_threads

    assert PROBE_MODULE not in sys.modules
    done = subprocess.run([sys.executable, str(HERE), "--probe", str(tmp_path), method],
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    for study in ("first", "second"):
        probes = [json.loads(p.read_text()) for p in (tmp_path / study).glob("probe_*.json")]
        assert len(probes) == 2
        assert len({p["pid"] for p in probes}) == 2  # two worker processes
        assert {p["preloaded"] for p in probes} == {method == "forkserver"}
        assert {p["env"] for p in probes} == {study}
        assert {p["cwd"] for p in probes} == {str(tmp_path)}
        # each worker's share of the cores, set after the parent's environment
        assert {p["threads"] for p in probes} == {str(worker_threads(2))}


def test_an_unknown_start_method_is_refused() -> None:
    from versionkit.errors import ConfigError
    from versionkit.sweep.runner import worker_context

    with pytest.raises(ConfigError, match="start method 'fork'"):
        worker_context(make_sweep(Path("unused"), "s", None, 1), "fork")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--probe"]:
        sys.exit(_probe_main(sys.argv[2:]))
    sys.exit(_worker_main(sys.argv[1:]))
