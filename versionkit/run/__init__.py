"""A run's life, torch-free: targets, start and resume, the lease, rank hand-over, finish.

``versionkit.lightning`` wires it into a Lightning Trainer; any other loop can use it
directly::

    from versionkit.run import resolve_target, start_run

    run = start_run(Registry(root), loaded)         # or resume=resolve_target("latest", ...)
    ...
    run.finish("completed")
"""

from versionkit.run.handover import RUN_ENV, global_rank_from_env
from versionkit.run.lease import LeaseLost, RunBusyError
from versionkit.run.resume import ResumeConfig, resume_config
from versionkit.run.run import FINISH_STATUSES, Run, RunPruned, plan_resume, start_run
from versionkit.run.target import (
    Target,
    TargetNotFoundError,
    list_experiments,
    resolve_target,
)

__all__ = [
    "FINISH_STATUSES",
    "RUN_ENV",
    "LeaseLost",
    "ResumeConfig",
    "Run",
    "RunBusyError",
    "RunPruned",
    "Target",
    "TargetNotFoundError",
    "global_rank_from_env",
    "list_experiments",
    "plan_resume",
    "resolve_target",
    "resume_config",
    "start_run",
]
