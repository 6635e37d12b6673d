"""What ``--resume``, ``--checkpoint`` and the CLI point at: one resolver for all.

Accepted spellings::

    outputs/exp/checkpoints/version_3/step_00000400-val_loss_1.2345.ckpt   that file
    outputs/exp/checkpoints/version_3        (or logs/version_3)           version 3
    outputs/exp                                                            its latest version
    latest                                   the latest version of the default experiment
    outputs/exp@3   outputs/exp@latest   outputs/exp@best   outputs/exp@TAG

Resuming wants a version's *last* checkpoint (``last.ckpt``); sampling wants its *best*
(lowest ``val_loss``). ``ROOT@best`` is the version that holds the best checkpoint of
the whole experiment.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from versionkit.errors import ConfigError, RegistryError, VersionNotFoundError
from versionkit.layout import (
    CHECKPOINT_SUFFIX,
    CHECKPOINTS,
    STATE_DIR,
    Layout,
)

__all__ = [
    "BEST_METRIC",
    "BEST_MODE",
    "Target",
    "TargetNotFoundError",
    "checkpoint_required",
    "list_experiments",
    "resolve_target",
]

#: What "best" means for sampling and ``ROOT@best``.
BEST_METRIC = "val_loss"
BEST_MODE = "min"

_STEP = re.compile(r"step[_=](\d+)")
_WANTS = ("last", "best")


class TargetNotFoundError(VersionNotFoundError):
    """The target names something that does not exist; the message lists what does."""

    exit_code = 3


@dataclass(frozen=True)
class Target:
    """A resolved target: the experiment root (as spelt), a version, and a checkpoint file
    (``None`` when the version has none yet)."""

    root: Path
    version: int
    checkpoint: Path | None


def list_experiments(output_root: Path) -> list[str]:
    """Names of the experiment folders directly under ``output_root`` (sorted)."""
    try:
        entries = sorted(os.scandir(output_root), key=lambda e: e.name)
    except OSError:
        return []
    return [e.name for e in entries if e.is_dir() and _is_experiment(Path(e.path))]


def _experiments_hint(root: Path) -> str:
    parent = root.parent
    names = list_experiments(parent)
    where = str(parent) if str(parent) not in ("", ".") else "the current folder"
    listed = ", ".join(names) if names else "none"
    return f"experiments under {where}: {listed}"


def _is_experiment(path: Path) -> bool:
    return (path / CHECKPOINTS).is_dir() or (path / STATE_DIR).is_dir()


def resolve_target(
    text: str,
    *,
    default_root: Path | None = None,
    backend: str | None = None,
    want_checkpoint: str = "last",
) -> Target:
    """Turn a user's target into ``(root, version, checkpoint)``.

    Args:
        text: a ``.ckpt`` file, a version folder, an experiment folder, ``latest``,
            ``ROOT@N``, ``ROOT@latest``, ``ROOT@best`` or ``ROOT@TAG``.
        default_root: the experiment that ``latest`` refers to.
        backend: registry backend URI (``None``: ``$VERSIONKIT_BACKEND`` or file).
        want_checkpoint: ``"last"`` (resume: ``last.ckpt``, else the highest step) or
            ``"best"`` (sampling: the lowest ``val_loss``, else ``last.ckpt``). A target
            that names a file gets that file either way.

    Raises:
        ConfigError: malformed input (exit 2).
        TargetNotFoundError: nothing there (exit 3); the message lists what exists.
    """
    if want_checkpoint not in _WANTS:
        raise ValueError(f"want_checkpoint must be one of {_WANTS}, got {want_checkpoint!r}")
    text = str(text)
    if not text.strip():
        raise ConfigError("an empty target: expected a .ckpt file, a version folder, an "
                          "experiment folder, 'latest' or ROOT@N|latest|best|TAG")
    if text == "latest":
        if default_root is None:
            raise ConfigError("latest: no experiment is known to look in (give --config or "
                              "--experiment.name, or a path)")
        return _version_target(default_root, None, text, backend, want_checkpoint)
    path = Path(text).expanduser()
    if path.exists():
        return _path_target(path, text, backend, want_checkpoint)
    if "@" in text:
        root_text, selector = text.rsplit("@", 1)
        return _selector_target(Path(root_text).expanduser(), selector, text, backend,
                                want_checkpoint)
    raise TargetNotFoundError(
        f"{text}: no such file or folder (expected a .ckpt file, a checkpoints/version_N "
        f"folder, an experiment folder, 'latest' or ROOT@N|latest|best|TAG); "
        f"{_experiments_hint(path.parent if path.suffix == CHECKPOINT_SUFFIX else path)}"
    )


def _path_target(path: Path, text: str, backend: str | None, want: str) -> Target:
    located = Layout.locate(path)
    if path.is_file():
        if path.suffix != CHECKPOINT_SUFFIX:
            raise ConfigError(f"{text}: not a checkpoint (expected a {CHECKPOINT_SUFFIX} file)")
        if located is None or located[1] is None or path.parent.parent.name != CHECKPOINTS:
            raise ConfigError(
                f"{text}: the checkpoint is not inside a {CHECKPOINTS}/version_N folder, so "
                "the version it belongs to is unknown"
            )
        return Target(root=located[0], version=located[1], checkpoint=path)
    if not path.is_dir():
        raise ConfigError(f"{text}: neither a file nor a folder")
    if located is not None:
        root, version = located
        return _version_target(root, version, text, backend, want)
    if not _is_experiment(path):
        raise ConfigError(
            f"{text}: a folder that is neither an experiment folder (no {CHECKPOINTS}/ "
            f"inside) nor a {CHECKPOINTS}/version_N folder"
        )
    return _version_target(path, None, text, backend, want)


def _selector_target(
    root: Path, selector: str, text: str, backend: str | None, want: str
) -> Target:
    if not selector:
        raise ConfigError(f"{text}: nothing after '@' (expected N, latest, best or a tag)")
    if not root.is_dir() or not _is_experiment(root):
        raise TargetNotFoundError(f"{text}: no experiment folder {root}; {_experiments_hint(root)}")
    if selector.isascii() and selector.isdigit():
        return _version_target(root, int(selector), text, backend, want)
    if selector == "latest":
        return _version_target(root, None, text, backend, want)
    registry = _registry(root, backend, text)
    if selector == "best":
        best = registry.best(BEST_METRIC, BEST_MODE)
        if best is None:
            raise TargetNotFoundError(
                f"{text}: no checkpoint of {root} has a {BEST_METRIC} yet"
                f"{_versions_hint(registry)}"
            )
        if want == "best":
            return Target(root=root, version=best.version, checkpoint=best.path)
        return _version_target(root, best.version, text, backend, want)
    tags = _tags(registry)
    if selector not in tags:
        known = ", ".join(sorted(tags)) or "none"
        raise TargetNotFoundError(
            f"{text}: no tag {selector!r} in {root} (tags: {known}; or use N, latest, best)"
        )
    return _version_target(root, tags[selector], text, backend, want)


def _tags(registry: Any) -> dict[str, int]:
    """Tag name -> version from the experiment's metadata (when the backend keeps it)."""
    get_meta = getattr(registry.backend, "get_meta", None)
    if get_meta is None:
        return {}
    raw = get_meta().get("tags", {})
    if not isinstance(raw, dict):
        return {}
    return {
        str(k): v for k, v in raw.items() if isinstance(v, int) and not isinstance(v, bool)
    }


def _registry(root: Path, backend: str | None, text: str) -> Any:
    from versionkit.registry import Registry

    try:
        return Registry(root, backend)
    except RegistryError as exc:
        raise ConfigError(f"{text}: {exc}") from None


def _versions_hint(registry: Any) -> str:
    numbers = [v.version for v in registry.list()]
    if not numbers:
        return " (it has no versions yet)"
    return f" (versions: {', '.join(map(str, numbers))})"


def _version_target(
    root: Path, version: int | None, text: str, backend: str | None, want: str
) -> Target:
    registry = _registry(root, backend, text)
    try:
        if version is None:
            if not root.is_dir():
                raise TargetNotFoundError(
                    f"{text}: experiment {root} does not exist; {_experiments_hint(root)}"
                )
            latest = registry.latest()
            if latest is None:
                raise TargetNotFoundError(
                    f"{text}: experiment {root} has no versions yet; {_experiments_hint(root)}"
                )
            version = latest.version
        elif version not in _known_versions(registry):
            raise TargetNotFoundError(f"{text}: {root} has no version {version}"
                                      f"{_versions_hint(registry)}")
        return Target(root=root, version=version,
                      checkpoint=_pick_checkpoint(registry, root, version, want))
    finally:
        registry.close()


def _known_versions(registry: Any) -> set[int]:
    known = {v.version for v in registry.list()}
    return known | set(registry.folder_versions())


def _pick_checkpoint(registry: Any, root: Path, version: int, want: str) -> Path | None:
    layout = Layout(root)
    if want == "best":
        try:
            best = registry.best(BEST_METRIC, BEST_MODE, version=version)
        except VersionNotFoundError:  # an untracked folder: fall back to its files
            best = None
        if best is not None and best.path.is_file():
            return Path(best.path)
    last = layout.last_checkpoint(version)
    if last.is_file():
        return last
    folder = layout.checkpoint_dir(version)
    try:
        files = [p for p in folder.iterdir() if p.suffix == CHECKPOINT_SUFFIX and p.is_file()]
    except OSError:
        return None
    if not files:
        return None

    def order(p: Path) -> tuple[int, int, str]:
        match = _STEP.search(p.name)
        return (int(match.group(1)) if match else -1, p.stat().st_mtime_ns, p.name)

    return max(files, key=order)


def checkpoint_required(target: Target, text: str) -> Path:
    """``target.checkpoint``, or a not-found error naming the empty version folder."""
    if target.checkpoint is None:
        folder = Layout(target.root).checkpoint_dir(target.version)
        raise TargetNotFoundError(
            f"{text}: {folder} holds no checkpoint ({CHECKPOINT_SUFFIX}) to start from"
        )
    return target.checkpoint

