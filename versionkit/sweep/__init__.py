"""Hyper-parameter sweeps on Optuna: one trial = one experiment version.

Any training script whose config is a versionkit :class:`~versionkit.ConfigModel` can be
swept: give :class:`Sweep` a ``parse`` function (command line -> LoadedConfig) and an
``objective`` (TrialContext -> number or outcome) and call :func:`run_sweep`.
The objective starts one run with ``extra=ctx.extra``, adds ``ctx.callbacks()`` to its
Lightning trainer (reports the metric, prunes) and returns the run's best metric::

    from versionkit.sweep import SearchSpace, Sweep, parse_storage, run_sweep

    def objective(ctx):
        run = start_run(Registry(root), ctx.loaded, extra=ctx.extra, printer=ctx.print)
        trainer = build_trainer(run, callbacks=ctx.callbacks(), max_steps=...)
        fit(run, trainer, MyModule(ctx.loaded.config), ...)
        return run.registry.best("val_loss", version=run.version).metrics["val_loss"]

Nothing here imports torch; optuna is imported when a study is opened.
"""

from __future__ import annotations

from versionkit.sweep.records import sweep_of, sweep_versions
from versionkit.sweep.runner import (
    Outcome,
    Sweep,
    TrialContext,
    format_summary,
    run_sweep,
    summary_rows,
    work,
    worker_threads,
)
from versionkit.sweep.space import Dimension, SearchSpace, parse_dimension
from versionkit.sweep.storage import StorageSpec, parse_storage

__all__ = [
    "Dimension",
    "Outcome",
    "SearchSpace",
    "StorageSpec",
    "Sweep",
    "TrialContext",
    "format_summary",
    "parse_dimension",
    "parse_storage",
    "run_sweep",
    "summary_rows",
    "sweep_of",
    "sweep_versions",
    "work",
    "worker_threads",
]
