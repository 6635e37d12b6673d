"""``fractalgen-sweep``: many training runs on Optuna, one experiment version per trial.

Examples::

    fractalgen-sweep --config config/train_small.yaml --max_steps 300 \\
        --space 'optim.lr=loguniform(1e-4,3e-3)' \\
        --space 'model.embed_dim_list=choice([64,32,16],[96,48,24])' --trials 8 --jobs 2
    fractalgen-sweep --config config/train_small.yaml --space-file space.yaml --trials 20 \\
        --storage postgresql://user@db/sweeps --study lr-search      # on every node

Every flag that is not a sweep flag is a training flag (as ``python main.py`` takes it);
the sampled values are put in place on top of them. Running the same command again
continues the study.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from versionkit.errors import ConfigError, VersionkitError

if TYPE_CHECKING:
    from fractalgen.config import TrainConfig
    from fractalgen.train import TrainResult
    from versionkit.config import LoadedConfig
    from versionkit.sweep import Sweep, TrialContext

__all__ = ["main"]

_CHOICES = {
    "sampler": ("tpe", "random", "grid"),
    "pruner": ("median", "none"),
    "direction": ("minimize", "maximize"),
}
#: what a trial imports: the ``--jobs`` workers are forked from one process that has
#: imported these once (torch, Lightning, scikit-learn's digits, TensorBoard's writer)
PRELOAD = (
    "fractalgen.train", "fractalgen.module", "fractalgen.data", "versionkit.lightning",
    "versionkit.sweep._lightning", "versionkit.run", "sklearn.datasets",
    "torch.utils.tensorboard", "PIL.Image", "optuna",
)
#: where the versions go: the same for every trial of one sweep
_SHARED = ("experiment.name", "experiment.output_root", "experiment.registry")
_HELP = """\
usage: fractalgen-sweep [TRAINING FLAGS] --space FIELD=KIND(ARGS) ... [--trials N] [--jobs J]
                        [--study NAME] [--storage URI] [--sampler tpe|random|grid]
                        [--pruner median|none] [--metric val_loss] [--direction minimize]

Sweep FractalGen's training config with Optuna. Each trial trains one new experiment
version whose config.yaml holds the sampled values; the study is shared by every process
(and machine) that names the same --study and --storage.

sweep flags:
  --space FIELD=KIND(ARGS)  searched field (repeatable): uniform(a,b), loguniform(a,b),
                            int(a,b), choice(v1,v2,...), e.g. 'optim.lr=loguniform(1e-4,3e-3)'
                            or 'model.embed_dim_list=choice([64,32,16],[96,48,24])'
  --space-file FILE         the same in YAML: 'optim.lr: loguniform(1e-4, 3e-3)' per line
  --trials N                total trials in the study (grid: default the full product)
  --jobs J                  trials at once on this machine, as processes (default 1);
                            each gets cores // J threads
  --study NAME              the Optuna study (default: the experiment name)
  --storage URI             default: an Optuna journal file in the experiment folder;
                            sqlite:///FILE or postgresql://USER@HOST/DB to share it
  --sampler NAME            tpe (default), random, or grid (choice only)
  --pruner NAME             median (default) or none
  --pruner-startup N        trials that finish before pruning starts (default 3)
  --metric NAME             the validation metric to optimise (default val_loss)
  --direction DIR           minimize (default) or maximize

Training flags: see python main.py --help (every config field, e.g. --max_steps 300).
"""


@dataclass
class _Args:
    spaces: list[str] = field(default_factory=list)
    space_files: list[str] = field(default_factory=list)
    trials: int | None = None
    jobs: int = 1
    study: str | None = None
    storage: str | None = None
    sampler: str = "tpe"
    pruner: str = "median"
    pruner_startup: int = 3
    metric: str = "val_loss"
    direction: str = "minimize"
    train: list[str] = field(default_factory=list)


_VALUED = ("space", "space-file", "trials", "jobs", "study", "storage", "sampler", "pruner",
           "pruner-startup", "metric", "direction")


def _positive(name: str, raw: str, *, minimum: int = 1) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise ConfigError(f"--{name}: expected an integer >= {minimum}, given {raw!r}")
    return value


def _split(argv: Sequence[str]) -> _Args:
    out = _Args()
    i = 0
    args = list(argv)
    while i < len(args):
        token = args[i]
        name, eq, inline = token[2:].partition("=") if token.startswith("--") else ("", "", "")
        name = name.replace("_", "-") if name.replace("_", "-") in _VALUED else name
        if name not in _VALUED:
            if name in ("resume", "print-config", "print_config"):
                raise ConfigError(f"--{name} does not apply to a sweep (each trial is a new "
                                  "version); run main.py for that")
            out.train.append(token)
            i += 1
            continue
        if eq:
            value = inline
            i += 1
        else:
            if i + 1 >= len(args):
                raise ConfigError(f"--{name} needs a value")
            value = args[i + 1]
            i += 2
        key = name.replace("-", "_")
        if key in _CHOICES and value not in _CHOICES[key]:
            close = difflib.get_close_matches(value, _CHOICES[key], n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ConfigError(f"--{name} {value!r}: expected one of "
                              f"{', '.join(_CHOICES[key])}{hint}")
        if key == "space":
            out.spaces.append(value)
        elif key == "space_file":
            out.space_files.append(value)
        elif key in ("trials", "jobs"):
            setattr(out, key, _positive(name, value))
        elif key == "pruner_startup":
            out.pruner_startup = _positive(name, value, minimum=0)
        elif key == "study" and not value.strip():
            raise ConfigError("--study: the name is empty")
        else:
            setattr(out, key, value)
    return out


def _parse(argv: list[str]) -> LoadedConfig[TrainConfig]:
    """A trial's command line -> LoadedConfig (module level: workers unpickle it)."""
    from fractalgen.config import parse_train_args

    return parse_train_args(argv, prog="fractalgen-sweep")


def _objective(ctx: TrialContext) -> TrainResult:
    """Train one trial: one version, the trial's callbacks in its trainer."""
    from fractalgen._memory import keep_freed_memory
    from fractalgen.train import train

    keep_freed_memory()  # a sweep's own process (or worker): see fractalgen._memory

    command = ["fractalgen-train", *ctx.loaded.flags]
    if ctx.loaded.config_file is not None:
        command[1:1] = ["--config", str(ctx.loaded.config_file)]
    result = train(ctx.loaded, callbacks=ctx.callbacks(), extra=ctx.extra, printer=ctx.print,
                   command=command)
    metric = ctx.sweep.metric
    if metric == "val_loss" or result.status != "completed":
        return result
    return dataclasses.replace(result, best_metric=_best_of(ctx, result.version, metric))


def _best_of(ctx: TrialContext, version: int, metric: str) -> float | None:
    """The version's best ``metric`` over its checkpoints, else its last logged value."""
    from fractalgen.train import experiment_root
    from versionkit.registry import Registry

    config = ctx.loaded.config
    mode = "min" if ctx.sweep.direction == "minimize" else "max"
    with Registry(experiment_root(config)[0], config.experiment.registry) as registry:
        best = registry.best(metric, mode, version=version)
        if best is not None and metric in best.metrics:
            return float(best.metrics[metric])
        value = registry.get(version).metrics.get(metric)
    return None if value is None else float(value)


def main(argv: Sequence[str] | None = None) -> int:
    """Run or continue a sweep; returns the exit code (2 for usage and config errors,
    130 after Ctrl-C, 143 after SIGTERM)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "-h" in args or "--help" in args:
        sys.stdout.write(_HELP)
        return 0
    from fractalgen._cli import run_cli

    def body() -> int:
        sweep, jobs = _prepare(args)
        from versionkit.sweep import format_summary, run_sweep, summary_rows

        code = run_sweep(sweep, jobs=jobs)
        rows = summary_rows(sweep, sweep.open_study())
        print(format_summary(sweep, rows), flush=True)
        if code in (130, 143):
            print("interrupted: the running trials are FAIL (interrupted) in the study and "
                  "their values are queued; run the same command again to continue",
                  file=sys.stderr)
        return code

    return run_cli(body, VersionkitError)


def _prepare(args: list[str]) -> tuple[Sweep, int]:
    """Everything checked before the first write: flags, config, space, storage."""
    # Workers unpickle parse and objective by module name; under `python -m` this file
    # is __main__, so name them through the importable module.
    import fractalgen.sweep as this
    from fractalgen.config import TrainConfig
    from fractalgen.train import experiment_root
    from versionkit.layout import Layout
    from versionkit.sweep import SearchSpace, Sweep, parse_storage

    parsed = _split(args)
    base = _parse(parsed.train)
    space = SearchSpace.parse(parsed.spaces, TrainConfig, files=parsed.space_files)
    for dim in space.dimensions:
        if dim.field in _SHARED:
            raise ConfigError(f"--space {dim.source}: every trial of a sweep is a version of "
                              f"one experiment, so {dim.field} cannot vary; search other fields")
    trials = parsed.trials
    if parsed.sampler == "grid":
        space.grid()  # refuses ranges
        total = space.grid_size()
        trials = total if trials is None else min(trials, total)
    elif trials is None:
        raise ConfigError(f"--trials is required with --sampler {parsed.sampler} "
                          "(the study's total number of trials)")
    space.check(TrainConfig, this._parse, parsed.train, grid=parsed.sampler == "grid")
    root, _shown = experiment_root(base.config)
    storage = parse_storage(parsed.storage, default_journal=Layout(Path(root)).sweep_journal)
    sweep = Sweep(
        study=parsed.study or str(base.config.experiment.name),
        storage=storage,
        space=space,
        trials=int(trials),
        schema=TrainConfig,
        parse=this._parse,
        objective=this._objective,
        base_args=tuple(parsed.train),
        sampler=parsed.sampler,  # type: ignore[arg-type]
        pruner=parsed.pruner,  # type: ignore[arg-type]
        pruner_startup=parsed.pruner_startup,
        metric=parsed.metric,
        direction=parsed.direction,  # type: ignore[arg-type]
        preload=PRELOAD,
    )
    return sweep, parsed.jobs


if __name__ == "__main__":
    sys.exit(main())
