"""Tags and references: which version ``ROOT@prod``, ``ROOT@best`` or ``ROOT@3`` names.

A tag names one version of an experiment at a time. Tags live in the backend's
experiment-level metadata, ``meta["tags"] = {name: N}``, so moving one is a single
atomic ``modify_meta`` step on every backend (file, memory, SQLite, PostgreSQL) and two
processes moving the same tag leave exactly one holder.

A reference is ``N`` (a version number), ``latest`` (the highest-numbered version),
``best`` (the version of the best checkpoint by ``val_loss``) or a tag name. A tag name
therefore must not look like a number or one of those keywords.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from versionkit.errors import ConfigError, RegistryError, VersionNotFoundError

if TYPE_CHECKING:
    from versionkit.registry import Registry

__all__ = [
    "KEYWORDS",
    "check_tag_name",
    "lookup_tag",
    "remove_tag",
    "resolve_version",
    "set_tag",
    "split_reference",
    "tags",
    "tags_by_version",
]

#: Words a reference gives a meaning of its own; no tag may be called so (any case).
KEYWORDS = frozenset(
    {"latest", "best", "last", "first", "all", "none", "null", "true", "false",
     "inf", "infinity", "nan", "head", "current"}
)
_TAG = re.compile(r"^[A-Za-z][A-Za-z0-9._-]{0,63}$")
_MAX_TAG = 64


def check_tag_name(name: str) -> str:
    """``name`` when it is a valid tag name, else ``ConfigError`` saying why.

    Valid: 1 to 64 characters, a letter first, then letters, digits, ``.``, ``_`` or
    ``-``; not a keyword (``latest``, ``best``, ...) and nothing that reads as a number
    (``1e3``, ``version_3``).
    """
    if not isinstance(name, str) or not name:
        raise ConfigError("a tag name cannot be empty")
    shown = name if len(name) <= 80 else name[:77] + "..."
    if name.lower() in KEYWORDS:
        raise ConfigError(
            f"tag {shown!r} is a reserved word; a tag cannot be any of "
            f"{', '.join(sorted(KEYWORDS))}"
        )
    if name[0] in "+-.0123456789" or name.lower().startswith("version_"):
        raise ConfigError(f"tag {shown!r} looks like a version number; start it with a letter")
    if not _TAG.match(name):
        raise ConfigError(
            f"tag {shown!r} is not a valid tag name: expected 1 to {_MAX_TAG} characters, "
            f"a letter first, then letters, digits, '.', '_' or '-'"
        )
    return name


def _meta(registry: Registry) -> dict[str, Any]:
    meta = registry.backend.get_meta()
    return dict(meta) if isinstance(meta, Mapping) else {}


def _tags_of(meta: Mapping[str, Any]) -> dict[str, int]:
    raw = meta.get("tags")
    if not isinstance(raw, Mapping):
        return {}
    return {
        str(k): int(v) for k, v in raw.items() if isinstance(v, int) and not isinstance(v, bool)
    }


def tags(registry: Registry) -> dict[str, int]:
    """Every tag of the experiment: ``{name: version}``, sorted by name."""
    return dict(sorted(_tags_of(_meta(registry)).items()))


def tags_by_version(registry: Registry) -> dict[int, list[str]]:
    """``{version: [tag, ...]}`` for every tagged version (names sorted)."""
    out: dict[int, list[str]] = {}
    for name, n in tags(registry).items():
        out.setdefault(n, []).append(name)
    return out


def lookup_tag(registry: Registry, name: str) -> int | None:
    """The version holding tag ``name``, or ``None``; for resolvers of references."""
    return _tags_of(_meta(registry)).get(name)


def _modify_meta(
    registry: Registry, change: Callable[[dict[str, Any]], Mapping[str, Any]]
) -> dict[str, Any]:
    return dict(registry.backend.modify_meta(change))


def set_tag(registry: Registry, name: str, version: int) -> int | None:
    """Point tag ``name`` at ``version`` in one atomic step; returns its previous holder.

    Raises:
        ConfigError: ``name`` is not a valid tag name.
        VersionNotFoundError: ``version`` does not exist.
    """
    check_tag_name(name)
    registry.get(version)  # VersionNotFoundError, naming the versions that exist
    previous: list[int | None] = [None]

    def change(meta: dict[str, Any]) -> dict[str, Any]:
        current = _tags_of(meta)
        previous[0] = current.get(name)  # the last call (a retrying backend) wins
        return {"tags": {**current, name: version}}

    _modify_meta(registry, change)
    return previous[0]


def remove_tag(registry: Registry, name: str) -> int:
    """Drop tag ``name``; returns the version that held it (``VersionNotFoundError`` if none)."""
    held: list[int | None] = [None]

    def change(meta: dict[str, Any]) -> dict[str, Any]:
        current = _tags_of(meta)
        held[0] = current.pop(name, None)
        return {"tags": current} if held[0] is not None else {}

    _modify_meta(registry, change)
    if held[0] is None:
        raise VersionNotFoundError(f"no tag {name!r} in {registry.root}{_tag_list(registry)}")
    return held[0]


def _tag_list(registry: Registry) -> str:
    try:
        names = list(tags(registry))
    except RegistryError:
        return ""
    if not names:
        return " (it has no tags)"
    shown = ", ".join(names[:20]) + (f", ... ({len(names)} in all)" if len(names) > 20 else "")
    return f" (tags: {shown})"


def split_reference(text: str) -> tuple[str, str | None]:
    """``"outputs/exp@prod"`` -> ``("outputs/exp", "prod")``; no ``@REF`` -> ``(text, None)``.

    Only the last ``@`` counts, and only when no ``/`` follows it, so a folder such as
    ``/home/me@corp/outputs`` stays a plain path.
    """
    head, sep, tail = text.rpartition("@")
    if not sep or "/" in tail or not head:
        return text, None
    return head, tail


def resolve_version(registry: Registry, ref: str, *, metric: str = "val_loss",
                    mode: str = "min") -> int:
    """The version number ``ref`` names in ``registry``.

    Args:
        registry: the experiment.
        ref: ``N``, ``latest``, ``best`` or a tag name.
        metric: what ``best`` means (default ``val_loss``).
        mode: ``min`` or ``max`` for ``best``.

    Raises:
        VersionNotFoundError: nothing by that name (the message lists the tags).
        ConfigError: an empty reference.
    """
    text = ref.strip()
    if not text:
        raise ConfigError("an empty version reference: expected N, latest, best or a tag")
    if text.isascii() and text.isdigit():
        n = int(text)
        registry.get(n)
        return n
    word = text.lower()
    if word == "latest":
        latest = registry.latest()
        if latest is None:
            raise VersionNotFoundError(f"{registry.root} has no versions yet, so no 'latest'")
        return latest.version
    if word == "best":
        best = registry.best(metric, mode)
        if best is None:
            raise VersionNotFoundError(
                f"no existing checkpoint in {registry.root} has a {metric!r} value, so no 'best'"
            )
        return best.version
    try:
        check_tag_name(text)
    except ConfigError:
        raise ConfigError(
            f"{text[:80]!r} is not a version reference: expected a version number (an integer "
            f">= 0), latest, best or a tag name"
        ) from None
    held = lookup_tag(registry, text)
    if held is None:
        raise VersionNotFoundError(
            f"{text!r} is not a version of {registry.root}: expected N, latest, best or a "
            f"tag{_tag_list(registry)}"
        )
    return held
