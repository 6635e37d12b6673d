"""The sweep's definition (:class:`Sweep`) and one trial as its objective sees it
(:class:`TrialContext`). Optuna is imported only when a study is opened."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from versionkit.errors import ConfigError
from versionkit.sweep.space import SearchSpace
from versionkit.sweep.storage import StorageSpec

if TYPE_CHECKING:
    import optuna

    from versionkit.config import ConfigModel, LoadedConfig

__all__ = ["Outcome", "Sweep", "TrialContext"]

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
        preload: modules a trial imports (e.g. ``("pytorch_lightning",)``). With
            ``jobs > 1`` one server process imports them, and the objective's and
            ``parse``'s modules, once; each worker is forked from it ready to train
            instead of importing them again (see :func:`versionkit.sweep.run_sweep`).
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
    preload: tuple[str, ...] = ()

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
        quiet: several trials share this console (``--jobs`` > 1): no progress bars.
    """

    trial: optuna.Trial
    sweep: Sweep
    params: dict[str, Any]
    loaded: LoadedConfig[Any]
    quiet: bool = False
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
        each validation, and stop a trial the pruner gives up on (``RunPruned``); when
        ``quiet``, also a progress bar that draws nothing (bars of several processes would
        overwrite each other's lines)."""
        from versionkit.sweep._lightning import silent_progress_bar, trial_callback

        found = [trial_callback(self, lightning=lightning)]
        if self.quiet:
            found.append(silent_progress_bar(lightning))
        return found
