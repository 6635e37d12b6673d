"""Sweep your own LightningModule with ``versionkit.sweep``: one version per trial.

The classifier of ``own_module.py`` searched over its learning rate and width, several
trials at once, each a numbered version whose ``config.yaml`` holds the sampled values::

    python examples/sweep_own_module.py --root outputs/digits_sweep --trials 8 --jobs 2
    python examples/sweep_own_module.py --root outputs/digits_sweep --trials 12 --jobs 2
        # the same study, continued: 4 more trials

The study lives in ``ROOT/.versionkit/sweeps.journal`` (``--storage
postgresql://...`` shares it across machines). Everything the sweep needs from your
code is a ``parse`` function (command line -> LoadedConfig) and an ``objective`` (one
trial -> its best metric); both must be importable by the worker processes, so they are
module-level functions.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from own_module import CONTROLS, DigitsConfig, digits, make_module

from versionkit.config import LoadedConfig, load_config
from versionkit.errors import VersionkitError

SPACE = ["optim.lr=loguniform(1e-3,1e-1)", "model.hidden=choice(16,64)"]
LIGHTNING = "pytorch_lightning"


def parse(argv: list[str]) -> LoadedConfig[DigitsConfig]:
    """A trial's flags (the base flags plus the sampled values) -> its config."""
    return load_config(DigitsConfig, argv, prog="sweep_own_module.py", controls=CONTROLS)


def objective(ctx: Any) -> Result:
    """Train one trial as its own version; return its best validation loss."""
    import torch

    from versionkit.lightning import build_trainer, fit
    from versionkit.registry import Registry
    from versionkit.run import start_run

    root = Path(str(ctx.loaded.controls["root"]))
    registry = Registry(root)
    # The record holds the study, trial number and sampled values (ctx.extra); the four
    # lines are printed with the trial's number in front (ctx.print).
    run = start_run(registry, ctx.loaded, extra=ctx.extra, printer=ctx.print,
                    display_root=str(root), seed=ctx.loaded.config.train.seed)
    config: DigitsConfig = run.config
    torch.manual_seed(config.train.seed)
    trainer = build_trainer(
        run, lightning=LIGHTNING, callbacks=ctx.callbacks(lightning=LIGHTNING),
        save_top_k=1, max_steps=config.train.max_steps,
        val_check_interval=config.train.val_every_n_steps, check_val_every_n_epoch=None,
        log_every_n_steps=10, accelerator="cpu", num_sanity_val_steps=0,
        enable_model_summary=False,
    )
    status = fit(run, trainer, make_module(LIGHTNING, config), *digits(config))
    best = registry.best("val_loss", "min", version=run.version)
    # An object with version/status/best_metric/checkpoint_dir tells the sweep how the
    # run ended (pruned, failed, interrupted) as well as its metric.
    return Result(run.version, status, None if best is None else best.metrics["val_loss"],
                  run.checkpoint_dir)


@dataclass
class Result:
    """How a trial's run ended (``versionkit.sweep.Outcome``)."""

    version: int
    status: str
    best_metric: float | None
    checkpoint_dir: Path


def main(argv: Sequence[str] | None = None) -> int:
    from versionkit.sweep import (
        SearchSpace,
        Sweep,
        format_summary,
        parse_storage,
        run_sweep,
        summary_rows,
    )

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="outputs/digits_sweep", help="experiment folder")
    parser.add_argument("--trials", type=int, default=8, help="the study's total trials")
    parser.add_argument("--jobs", type=int, default=2, help="trials at once")
    parser.add_argument("--storage", help="journal (default), sqlite:///F or postgresql://")
    parser.add_argument("--max_steps", type=int, default=100, help="training steps a trial")
    args = parser.parse_args(argv)
    for name in ("trials", "jobs", "max_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name}: expected an integer >= 1, given {getattr(args, name)}")
    try:
        root = Path(args.root)
        flags = [f"--root={root}", f"--train.max_steps={args.max_steps}",
                 "--train.val_every_n_steps=20"]
        sweep = Sweep(
            study="digits", schema=DigitsConfig, parse=parse, objective=objective,
            storage=parse_storage(args.storage, default_journal=root / ".versionkit" /
                                  "sweeps.journal"),
            space=SearchSpace.parse(SPACE, DigitsConfig), trials=args.trials,
            base_args=tuple(flags), pruner="median", pruner_startup=2,
            preload=("pytorch_lightning", "sklearn.datasets", "own_module"),
        )
        code = run_sweep(sweep, jobs=args.jobs)
        print(format_summary(sweep, summary_rows(sweep, sweep.open_study())))
        return code
    except VersionkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
