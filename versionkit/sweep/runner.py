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
import logging
import math
import multiprocessing
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from versionkit.errors import ConfigError
from versionkit.registry.provenance import pid_alive
from versionkit.run import RunPruned
from versionkit.sweep.storage import MAX_RETRY, quiet_experimental
from versionkit.sweep.study import (
    ATTR_ERROR,
    ATTR_STATUS,
    ATTR_WORKER,
    Sweep,
    TrialContext,
)

if TYPE_CHECKING:
    import optuna

__all__ = ["run_sweep", "work", "worker_context", "worker_threads"]


#: exit codes of a sweep stopped by Ctrl-C or by SIGTERM (128 + the signal, as shells show)
INTERRUPTED = 130
TERMINATED = 143


class _Terminated(KeyboardInterrupt):
    """SIGTERM ended the trial (Optuna fails a trial on KeyboardInterrupt, then re-raises)."""


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
        if pid_alive(pid):
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


def _run_one(sweep: Sweep, trial: optuna.Trial, *, quiet: bool = False) -> float:
    import optuna

    trial.set_user_attr(ATTR_WORKER, f"{socket.gethostname()}:{os.getpid()}")
    # A queued retry carries its original's attributes; this attempt's status starts
    # afresh (a FAIL trial still "running" is one whose worker died).
    trial.set_user_attr(ATTR_STATUS, "running")

    def fail(message: str) -> None:
        trial.set_user_attr(ATTR_STATUS, "failed")
        trial.set_user_attr(ATTR_ERROR, message)
        print(f"[trial {trial.number}] ✗ failed: {message}", flush=True)

    try:
        params = sweep.space.suggest(trial)
        # A range's ends were checked before the sweep started; a value between them can
        # still break a rule across fields (e.g. width divisible by heads): that trial
        # fails on its own, like a run that fails.
        loaded = sweep.parse([*sweep.base_args, *sweep.space.flags(sweep.schema, params)])
        ctx = TrialContext(trial, sweep, params, loaded, quiet=quiet)
        result = sweep.objective(ctx)
    except (optuna.TrialPruned, RunPruned) as exc:
        trial.set_user_attr(ATTR_STATUS, "pruned")
        print(f"[trial {trial.number}] ✗ pruned" + (f": {exc}" if str(exc) else ""), flush=True)
        raise optuna.TrialPruned(str(exc)) from None
    except KeyboardInterrupt:
        trial.set_user_attr(ATTR_STATUS, "interrupted")
        raise
    except SystemExit as exc:
        # SIGTERM (a scheduler's preemption) ends a Lightning run with SystemExit, which
        # Optuna would leave RUNNING: the trial is interrupted, like Ctrl-C.
        trial.set_user_attr(ATTR_STATUS, "interrupted")
        raise _Terminated(str(exc.code)) from None
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


def work(sweep: Sweep, *, threads: int | None = None, quiet: bool = False) -> int:
    """One worker: take trials until the study holds ``sweep.trials``; returns an exit
    code (0, 130 after Ctrl-C, 143 after SIGTERM).

    Args:
        sweep: the sweep.
        threads: CPU threads for this process (None: leave them).
        quiet: other workers share the console: no progress bars, and Lightning's
            per-run notices (GPU available, model summary) are not printed.
    """
    import optuna
    from optuna.trial import TrialState

    if threads is not None:
        _limit_threads(threads)
    if quiet:
        # The loggers that print them; their packages reset the packages' own level on
        # import, but not these.
        for package in ("pytorch_lightning", "lightning.pytorch"):
            for name in ("utilities.rank_zero", "callbacks.model_summary"):
                logging.getLogger(f"{package}.{name}").setLevel(logging.WARNING)
    # Failed trials are reported on our own one line; Optuna's would add a traceback.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = sweep.open_study()
    current: list[optuna.Trial] = []

    def objective(trial: optuna.Trial) -> float:
        claim.close()
        current[:] = [trial]
        return _run_one(sweep, trial, quiet=quiet)

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
        except KeyboardInterrupt as exc:
            claim.close()
            if current:
                number = current[0].number
                for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
                    if t.number == number:
                        _requeue(study, t)
            return TERMINATED if isinstance(exc, _Terminated) else INTERRUPTED
        finally:
            claim.close()


def _check_same_space(sweep: Sweep, study: optuna.Study) -> None:
    """Refuse to continue a study that searched other fields (its trials would count)."""
    fields = set(sweep.space.fields)
    choices = {d.field: d for d in sweep.space.dimensions if d.kind == "choice"}
    for trial in study.get_trials(deepcopy=False):
        names = set(trial.distributions)
        if names and names != fields:
            raise ConfigError(
                f"study {sweep.study!r} ({sweep.storage.shown}) searches "
                f"{', '.join(sorted(names))}; this command searches "
                f"{', '.join(sorted(fields))}: give another --study"
            )
        for name, dim in choices.items():
            before = getattr(trial.distributions.get(name), "choices", None)
            if before is not None and list(before) != dim.optuna_choices():
                raise ConfigError(
                    f"study {sweep.study!r} searched {name} over choice"
                    f"({','.join(map(str, before))}); Optuna cannot change a choice's values "
                    f"within a study ({dim.source}): give another --study"
                )


def _child(sweep: Sweep, threads: int, environ: dict[str, str]) -> None:
    # A forkserver's child inherits the server's environment, from when it started; the
    # sweep's is the parent's now (the working folder and sys.path travel on their own).
    os.environ.clear()
    os.environ.update(environ)
    # Its own process group: a terminal's Ctrl-C reaches the parent alone, which passes
    # it on once (a second SIGINT could cut short the worker's checkpoint on the way out).
    os.setpgrp()
    sys.exit(work(sweep, threads=threads, quiet=True))


#: how workers start: "forkserver" where the platform has it, else "spawn"
START_METHODS = ("forkserver", "spawn")


def worker_context(sweep: Sweep, start_method: str | None = None) -> Any:
    """The multiprocessing context the workers start from.

    ``forkserver`` (the default where it exists): one server process, started at once
    and importing while the parent opens the study, imports ``sweep.preload`` and the
    objective's and ``parse``'s modules once; every worker is forked from it with torch
    and Lightning already imported. Spawned workers would each import them again (2.5 to
    5 s of CPU per worker on a 2-core machine). The server is this process's multiprocessing
    forkserver: its preload list is set by the first sweep that starts it.
    """
    method = start_method or next(
        m for m in START_METHODS if m in multiprocessing.get_all_start_methods())
    if method not in START_METHODS:
        raise ConfigError(f"start method {method!r}: expected one of {', '.join(START_METHODS)}")
    context = multiprocessing.get_context(method)
    if method == "forkserver":
        modules = [__name__, *sweep.preload]
        for function in (sweep.objective, sweep.parse):
            module = getattr(function, "__module__", None)
            if module and module != "__main__":
                modules.append(module)
        context.set_forkserver_preload(list(dict.fromkeys(modules)))
        from multiprocessing import forkserver

        forkserver.ensure_running()  # returns at once; the server imports meanwhile
    return context


def _wait(procs: list[Any]) -> int | None:
    """Join the workers; on Ctrl-C or SIGTERM, pass the signal on to each and keep
    waiting. Returns the signal that arrived, if any."""
    got: list[int] = []

    def forward(signum: int) -> None:
        got.append(signum)
        for proc in procs:
            if proc.is_alive() and proc.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signum)

    previous = signal.signal(signal.SIGTERM, lambda signum, _frame: forward(signum))
    try:
        for proc in procs:
            while True:
                try:
                    proc.join()
                    break
                except KeyboardInterrupt:
                    forward(signal.SIGINT)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return got[0] if got else None

def run_sweep(sweep: Sweep, *, jobs: int = 1, printer: Callable[[str], None] = print,
              start_method: str | None = None) -> int:
    """Create or continue the study and run it with ``jobs`` worker processes.

    With ``jobs == 1`` the trials run in this process; otherwise each worker is a process
    of its own with ``cores // jobs`` threads, forked from a server that has imported
    ``sweep.preload`` (``start_method="spawn"``: a fresh interpreter each, as on platforms
    without a forkserver; see :func:`worker_context`). Ctrl-C or SIGTERM stops every
    worker: their trials are FAIL (status ``interrupted``) and queued again for the next
    run, their versions ``interrupted`` (by the run's own handling).

    Returns:
        0 when the study holds its trials; 130 after Ctrl-C; 143 after SIGTERM; 1 if a
        worker crashed.
    """
    import optuna

    # Our trial lines replace Optuna's INFO log (it would also print a traceback per
    # failed trial).
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    context = worker_context(sweep, start_method) if jobs > 1 else None
    study = sweep.open_study(create=True)
    _check_same_space(sweep, study)
    have = sum(_counted(t) for t in study.get_trials(deepcopy=False))
    if have >= sweep.trials:
        printer(f"✓ Study {sweep.study} already holds {have} trials (--trials {sweep.trials}); "
                "raise --trials to run more")
        return 0
    printer(f"✓ Study {sweep.study}: {sweep.trials - have} trial(s) to run, {jobs} at a time "
            f"({sweep.storage.shown})")
    if context is None:
        return work(sweep)
    threads = worker_threads(jobs)
    environ = dict(os.environ)
    procs = [context.Process(target=_child, args=(sweep, threads, environ), daemon=False)
             for _ in range(min(jobs, sweep.trials - have))]
    for proc in procs:
        proc.start()
    arrived = _wait(procs)
    codes = [proc.exitcode for proc in procs]
    if arrived == signal.SIGTERM or TERMINATED in codes:
        return TERMINATED
    if arrived is not None or INTERRUPTED in codes:
        return INTERRUPTED
    return 0 if all(code == 0 for code in codes) else 1
