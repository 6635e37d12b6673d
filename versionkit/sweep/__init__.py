"""Hyper-parameter sweeps on Optuna: one trial = one experiment version.

Any training script whose config is a versionkit :class:`~versionkit.ConfigModel` can be
swept: give :class:`Sweep` a ``parse`` function (command line -> LoadedConfig) and an
``objective`` (TrialContext -> number or outcome) and call :func:`run_sweep`.
The objective starts one run with ``extra=ctx.extra`` and ``printer=ctx.print``, adds
``ctx.callbacks()`` to its Lightning trainer (links the version, reports the metric,
prunes) and returns the run's best metric (or an object with ``version``, ``status``,
``best_metric`` and ``checkpoint_dir``)::

    from versionkit.sweep import SearchSpace, Sweep, parse_storage, run_sweep

    def objective(ctx):
        run = start_run(Registry(root), ctx.loaded, extra=ctx.extra, printer=ctx.print)
        trainer = build_trainer(run, callbacks=ctx.callbacks(), max_steps=...)
        fit(run, trainer, MyModule(ctx.loaded.config), ...)
        return run.registry.best("val_loss", version=run.version).metrics["val_loss"]

Names are imported on first use: ``versionkit.sweep.records`` (used by
``versionkit list --sweep``) stays free of pydantic and optuna; nothing imports torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    "Dimension": "versionkit.sweep.space",
    "SearchSpace": "versionkit.sweep.space",
    "parse_dimension": "versionkit.sweep.space",
    "StorageSpec": "versionkit.sweep.storage",
    "parse_storage": "versionkit.sweep.storage",
    "Outcome": "versionkit.sweep.study",
    "Sweep": "versionkit.sweep.study",
    "TrialContext": "versionkit.sweep.study",
    "format_summary": "versionkit.sweep.summary",
    "run_sweep": "versionkit.sweep.runner",
    "summary_rows": "versionkit.sweep.summary",
    "work": "versionkit.sweep.runner",
    "worker_threads": "versionkit.sweep.runner",
    "sweep_of": "versionkit.sweep.records",
    "sweep_versions": "versionkit.sweep.records",
}

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

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from versionkit.sweep.records import sweep_of, sweep_versions
    from versionkit.sweep.runner import run_sweep, work, worker_threads
    from versionkit.sweep.space import Dimension, SearchSpace, parse_dimension
    from versionkit.sweep.storage import StorageSpec, parse_storage
    from versionkit.sweep.study import Outcome, Sweep, TrialContext
    from versionkit.sweep.summary import format_summary, summary_rows


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'versionkit.sweep' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
