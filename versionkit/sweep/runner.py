"""Run a sweep: J worker processes, each taking trials from one Optuna study until the
study holds the requested number of trials.

Optuna does the work: the study and its storage, sampling, pruning, the RDB heartbeat
(a killed worker's trial turns ``FAIL`` and is queued again with the same values). This
module adds only what Optuna leaves to the caller: an exact total trial count across
workers (see :mod:`versionkit.sweep.storage`), the same "a killed worker's trial is FAIL"
for journal files (which have no heartbeat: a trial whose worker process on this host is
gone is failed by the next worker), one version per trial, and the console.

Counted towards ``trials``: finished trials (completed, pruned, failed by their own run)
plus the running and queued ones. A trial that was interrupted (Ctrl-C) or whose worker
died is FAIL in the study but not counted; its values are queued again, so running the
same command again continues where the sweep stopped.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import signal
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from versionkit.errors import ConfigError
from versionkit.sweep.space import SearchSpace
from versionkit.sweep.storage import MAX_RETRY, StorageSpec, quiet_experimental

if TYPE_CHECKING:
    import optuna

    from versionkit.config import ConfigModel, LoadedConfig

__all__ = ["Outcome", "Sweep", "TrialContext", "run_sweep", "worker_threads"]

#: user attributes each trial carries in the study
ATTR_VERSION = "version"
ATTR_CHECKPOINT_DIR = "checkpoint_dir"
ATTR_STATUS = "status"
ATTR_ERROR = "error"
#: "host:pid" of the worker process that runs the trial
ATTR_WORKER = "worker"


class Outcome(Protocol):
    """What an objective may return instead of a bare number (``fractalgen.train``'s
    ``TrainResult`` is one)."""

    version: int
    status: str
    best_metric: float | None
    checkpoint_dir: Path


@dataclass(frozen=True)
class Sweep:
    """Everything a worker needs; picklable, so ``parse`` and ``objective`` must be
    module-level functions (or other picklable callables).

    Attributes:
        study: the Optuna study name.
        storage: where the study lives.
        space: the searched fields.
        trials: the study's total number of trials (counted as the module says).
        schema: the config schema.
        parse: turns a command line (base flags + sampled values) into a LoadedConfig.
        objective: runs one trial; gets a :class:`TrialContext`, returns a number or an
            :class:`Outcome`; may raise (the trial fails, the sweep goes on).
        base_args: the training flags every trial shares.
        sampler: ``tpe``, ``random`` or ``grid``.
        pruner: ``median`` or ``none``.
        pruner_startup: trials that finish before the median pruner starts pruning.
        metric: the metric the objective optimises (reported while training).
        direction: ``minimize`` or ``maximize``.
    """

    study: str
    storage: StorageSpec
    space: SearchSpace
    trials: int
    schema: type[ConfigModel]
    parse: Callable[[list[str]], LoadedConfig[Any]]
    objective: Callable[[TrialContext], float | Outcome]
    base_args: tuple[str, ...] = ()
    sampler: Literal["tpe", "random", "grid"] = "tpe"
    pruner: Literal["median", "none"] = "median"
    pruner_startup: int = 3
    metric: str = "val_loss"
    direction: Literal["minimize", "maximize"] = "minimize"

    def make_sampler(self) -> optuna.samplers.BaseSampler:
        """The Optuna sampler (a fresh random seed per worker)."""
        import optuna

        if self.sampler == "grid":
            return optuna.samplers.GridSampler(self.space.grid())
        if self.sampler == "random":
            return optuna.samplers.RandomSampler()
        return optuna.samplers.TPESampler()

    def make_pruner(self) -> optuna.pruners.BasePruner:
        """The Optuna pruner."""
        import optuna

        if self.pruner == "none":
            return optuna.pruners.NopPruner()
        return optuna.pruners.MedianPruner(n_startup_trials=self.pruner_startup)

    def open_study(self, *, create: bool = False) -> optuna.Study:
        """Open (or with ``create``, create or continue) the study.

        Raises:
            ConfigError: the existing study optimises in the other direction.
        """
        import optuna

        storage = self.storage.open()
        if create:
            study = optuna.create_study(
                storage=storage, study_name=self.study, direction=self.direction,
                sampler=self.make_sampler(), pruner=self.make_pruner(), load_if_exists=True,
            )
            if study.direction.name.lower() != self.direction:
                raise ConfigError(
                    f"study {self.study!r} in {self.storage.shown} was created with direction "
                    f"{study.direction.name.lower()}; --direction {self.direction} would mix "
                    "the two (use another --study)"
                )
            return study
        return optuna.load_study(
            study_name=self.study, storage=storage, sampler=self.make_sampler(),
            pruner=self.make_pruner(),
        )


@dataclass
class TrialContext:
    """One trial as its objective sees it.

    Attributes:
        trial: the Optuna trial (report to it, or let :meth:`callbacks` do it).
        sweep: the sweep.
        params: the sampled values, ``{dotted field: config value}``.
        loaded: the trial's complete config (base flags with the sampled values in place).
    """

    trial: optuna.Trial
    sweep: Sweep
    params: dict[str, Any]
    loaded: LoadedConfig[Any]
    linked: dict[str, Any] = field(default_factory=dict)

    @property
    def number(self) -> int:
        """The trial's number in the study."""
        return int(self.trial.number)

    @property
    def extra(self) -> dict[str, Any]:
        """What the version's record holds about the trial (give it to ``start_run``)."""
        return {"sweep": {"study": self.sweep.study, "trial": self.number,
                          "params": dict(self.params)}}

    def print(self, line: str) -> None:
        """Print a console line prefixed with the trial number."""
        print(f"[trial {self.number}] {line}", flush=True)

    def link(self, version: int, checkpoint_dir: str | Path) -> None:
        """Record the trial's version and checkpoint folder in the study (idempotent)."""
        if self.linked.get(ATTR_VERSION) == version:
            return
        self.linked[ATTR_VERSION] = version
        self.trial.set_user_attr(ATTR_VERSION, int(version))
        self.trial.set_user_attr(ATTR_CHECKPOINT_DIR, str(checkpoint_dir))

    def callbacks(self, *, lightning: str = "pytorch_lightning") -> list[Any]:
        """Lightning callbacks for this trial: link the version, report ``metric`` after
        each validation, and stop a trial the pruner gives up on (``RunPruned``)."""
        from versionkit.sweep._lightning import trial_callback

        return [trial_callback(self, lightning=lightning)]


class _TrialFailed(Exception):
    """The objective's run ended as failed without raising."""


def worker_threads(jobs: int) -> int:
    """CPU threads per worker so that ``jobs`` workers share this machine's cores."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, jobs))


def _limit_threads(threads: int) -> None:
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = str(threads)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _counted(trial: optuna.trial.FrozenTrial) -> bool:
    from optuna.trial import TrialState

    if trial.state == TrialState.FAIL:
        return trial.user_attrs.get(ATTR_STATUS) == "failed"
    return True


def _requeue(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    with quiet_experimental():
        RetryHeartbeatStaleTrialCallback(MAX_RETRY)(study, trial)


def _fail_dead_here(study: optuna.Study) -> None:
    """FAIL (and queue again) running trials whose worker on this host is gone."""
    from optuna.trial import TrialState

    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker_host, _, pid_text = str(trial.user_attrs.get(ATTR_WORKER, "")).rpartition(":")
        if worker_host != host or not pid_text.isdigit():
            continue
        pid = int(pid_text)
        if _pid_alive(pid):
            continue
        try:
            changed = study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except Exception:  # another worker failed it first
            changed = False
        if changed:
            print(f"[trial {trial.number}] ✗ its worker (pid {pid}) is gone: FAIL, queued again",
                  flush=True)
            _requeue(study, trial)


def _outcome(result: Any) -> tuple[str, float | None, int | None, Path | None]:
    if isinstance(result, (int, float)) and not isinstance(result, bool):
        return "completed", float(result), None, None
    status = str(getattr(result, "status", "completed"))
    value = getattr(result, "best_metric", None)
    version = getattr(result, "version", None)
    folder = getattr(result, "checkpoint_dir", None)
    return status, (None if value is None else float(value)), version, folder


def _pruned_types() -> tuple[type[BaseException], ...]:
    import optuna

    types: list[type[BaseException]] = [optuna.TrialPruned]
    with contextlib.suppress(ImportError):
        from versionkit.run import RunPruned

        types.append(RunPruned)
    return tuple(types)


def _run_one(sweep: Sweep, trial: optuna.Trial) -> float:
    import optuna

    trial.set_user_attr(ATTR_WORKER, f"{socket.gethostname()}:{os.getpid()}")
    params = sweep.space.suggest(trial)
    loaded = sweep.parse([*sweep.base_args, *sweep.space.flags(sweep.schema, params)])
    ctx = TrialContext(trial, sweep, params, loaded)

    def fail(message: str) -> None:
        trial.set_user_attr(ATTR_STATUS, "failed")
        trial.set_user_attr(ATTR_ERROR, message)
        ctx.print(f"✗ failed: {message}")

    try:
        result = sweep.objective(ctx)
    except _pruned_types() as exc:
        trial.set_user_attr(ATTR_STATUS, "pruned")
        ctx.print(f"✗ pruned: {exc}" if str(exc) else "✗ pruned")
        raise optuna.TrialPruned(str(exc)) from None
    except KeyboardInterrupt:
        trial.set_user_attr(ATTR_STATUS, "interrupted")
        raise
    except Exception as exc:
        fail(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        raise
    status, value, version, folder = _outcome(result)
    if version is not None and folder is not None:
        ctx.link(int(version), folder)
    if status == "pruned":
        trial.set_user_attr(ATTR_STATUS, "pruned")
        raise optuna.TrialPruned()
    if status == "interrupted":
        trial.set_user_attr(ATTR_STATUS, "interrupted")
        raise KeyboardInterrupt
    if status != "completed":
        fail(f"the run ended {status}")
        raise _TrialFailed(status)
    if value is None or not math.isfinite(value):
        fail(f"the run reported no finite {sweep.metric} ({value})")
        raise _TrialFailed(sweep.metric)
    return value  # COMPLETE says "completed"; one database write less per trial


def work(sweep: Sweep, *, threads: int | None = None) -> int:
    """One worker: take trials until the study holds ``sweep.trials``; returns an exit
    code (0, or 130 after Ctrl-C)."""
    import optuna
    from optuna.trial import TrialState

    if threads is not None:
        _limit_threads(threads)
    # Failed trials are reported on our own one line; Optuna's would add a traceback.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = sweep.open_study()
    current: list[optuna.Trial] = []

    def objective(trial: optuna.Trial) -> float:
        claim.close()
        current[:] = [trial]
        return _run_one(sweep, trial)

    while True:
        claim = contextlib.ExitStack()
        try:
            claim.enter_context(sweep.storage.claim_lock(sweep.study))
            _fail_dead_here(study)
            if sum(_counted(t) for t in study.get_trials(deepcopy=False)) >= sweep.trials:
                return 0
            current.clear()
            with quiet_experimental():
                study.optimize(objective, n_trials=1, catch=(Exception,))
        except KeyboardInterrupt:
            claim.close()
            if current:
                number = current[0].number
                for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
                    if t.number == number:
                        _requeue(study, t)
            return 130
        finally:
            claim.close()


def _child(sweep: Sweep, threads: int) -> None:
    sys.exit(work(sweep, threads=threads))


def run_sweep(sweep: Sweep, *, jobs: int = 1, printer: Callable[[str], None] = print) -> int:
    """Create or continue the study and run it with ``jobs`` worker processes.

    With ``jobs == 1`` the trials run in this process; otherwise each worker is a fresh
    (spawned) process with ``cores // jobs`` threads. Ctrl-C stops every worker: their
    trials are FAIL (status ``interrupted``) and queued again for the next run.

    Returns:
        0 when the study holds its trials; 130 after Ctrl-C; 1 if a worker crashed.
    """
    import optuna

    # Our trial lines replace Optuna's INFO log (it would also print a traceback per
    # failed trial).
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = sweep.open_study(create=True)
    have = sum(_counted(t) for t in study.get_trials(deepcopy=False))
    if have >= sweep.trials:
        printer(f"✓ Study {sweep.study} already holds {have} trials (--trials {sweep.trials}); "
                "raise --trials to run more")
        return 0
    printer(f"✓ Study {sweep.study}: {sweep.trials - have} trial(s) to run, {jobs} at a time "
            f"({sweep.storage.shown})")
    if jobs <= 1:
        return work(sweep)
    threads = worker_threads(jobs)
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=_child, args=(sweep, threads), daemon=False)
             for _ in range(min(jobs, sweep.trials - have))]
    for proc in procs:
        proc.start()
    interrupted = False
    try:
        for proc in procs:
            proc.join()
    except KeyboardInterrupt:
        interrupted = True
        # A terminal's Ctrl-C reaches every worker already; `kill -INT` of this process
        # alone does not, so pass it on.
        for proc in procs:
            if proc.is_alive() and proc.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGINT)
        for proc in procs:
            while True:
                try:
                    proc.join()
                    break
                except KeyboardInterrupt:
                    continue
    codes = [proc.exitcode for proc in procs]
    if interrupted or 130 in codes:
        return 130
    return 0 if all(code == 0 for code in codes) else 1


def summary_rows(sweep: Sweep, study: optuna.Study) -> list[dict[str, Any]]:
    """The trials ranked: completed by value, then pruned, then the rest by number."""
    from optuna.trial import TrialState

    sign = 1.0 if sweep.direction == "minimize" else -1.0
    rows: list[tuple[tuple[int, float, int], dict[str, Any]]] = []
    for t in study.get_trials(deepcopy=False):
        status = t.user_attrs.get(ATTR_STATUS)
        if t.state == TrialState.COMPLETE:
            status, best = "completed", t.value
        elif t.state == TrialState.PRUNED:
            status = "pruned"
            seen = list(t.intermediate_values.values())
            best = (min if sign > 0 else max)(seen) if seen else None
        elif t.state == TrialState.FAIL:
            status, best = status or "dead", None
        else:
            status, best = t.state.name.lower(), None
        group = {"completed": 0, "pruned": 1}.get(str(status), 2)
        key = (group, sign * best if best is not None else math.inf, t.number)
        rows.append((key, {
            "trial": t.number,
            "version": t.user_attrs.get(ATTR_VERSION),
            "params": sweep.space.decode(t.params),
            "best": best,
            "status": status,
            "error": t.user_attrs.get(ATTR_ERROR),
        }))
    return [row for _, row in sorted(rows, key=lambda r: r[0])]


def format_summary(sweep: Sweep, rows: Sequence[Mapping[str, Any]]) -> str:
    """The summary table: trial, version, each sampled field, best metric, status."""
    head = ["trial", "version", *sweep.space.fields, f"best {sweep.metric}", "status"]
    body = []
    for row in rows:
        params = row["params"]
        best = row["best"]
        body.append([
            str(row["trial"]),
            "-" if row["version"] is None else str(row["version"]),
            *(_short(params.get(f)) for f in sweep.space.fields),
            "-" if best is None else f"{best:.4f}",
            str(row["status"]),
        ])
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in [head, *body]]
    return "\n".join(lines)


def _short(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_short(v) for v in value) + "]"
    return str(value)
