"""The experiment-version registry, one module per concept.

- :mod:`~versionkit.registry.core`: :class:`Registry` (allocation and record updates);
- :mod:`~versionkit.registry.queries`: versions, checkpoints, ``best``, configs, diffs;
- :mod:`~versionkit.registry.folders`: ``version_N`` folders and paths under the root;
- :mod:`~versionkit.registry.views`: :class:`VersionInfo`, :class:`CheckpointInfo`;
- :mod:`~versionkit.registry.records`: statuses and what a new record holds;
- :mod:`~versionkit.registry.provenance`: host, user, git commit, package versions;
- :mod:`~versionkit.registry.checkpoint_names`: step and metrics in a checkpoint's name.
"""

from __future__ import annotations

from versionkit.registry.checkpoint_names import parse_checkpoint_name
from versionkit.registry.core import Registry
from versionkit.registry.records import STATUSES
from versionkit.registry.views import CheckpointInfo, VersionInfo

__all__ = ["STATUSES", "CheckpointInfo", "Registry", "VersionInfo", "parse_checkpoint_name"]
