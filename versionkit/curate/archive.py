"""``versionkit export`` / ``import``: one version as a ``.tar.gz``, and its safe import.

The archive holds, under ``versionkit-export/``: ``checkpoints/config.yaml``,
``checkpoints/config.source.yaml``, the chosen checkpoints, ``logs/`` (everything the
version logged) and, last, ``manifest.json``: the version's record, where it came from
(host, root, number, config hash) and the size and sha256 of every file.

Import reads the whole archive once before it writes anything. Absolute paths, ``..``,
symbolic and hard links, devices, FIFOs, duplicate or unexpected names, files that do
not match the manifest and a truncated or corrupt stream are each refused with one line,
and a refusal changes nothing. Only then does it allocate a new number in the target
root through that root's own backend and extract the files into the new version's
folders, checking each file's hash again as it is written.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import io
import json
import os
import shutil
import socket
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from versionkit._atomic import _umask
from versionkit.errors import (
    ConfigError,
    DiskFullError,
    RegistryError,
    VersionkitError,
    VersionNotFoundError,
)
from versionkit.layout import CHECKPOINT_SUFFIX, CONFIG_FILE, LAST_CHECKPOINT, SOURCE_CONFIG_FILE

if TYPE_CHECKING:
    from versionkit.registry import Registry

__all__ = ["CHOICES", "ArchiveError", "ImportResult", "export_version", "import_version"]

PREFIX = "versionkit-export"
MANIFEST = "manifest.json"
FORMAT = 1
#: What ``--checkpoints`` accepts (comma-separated); ``all`` is every checkpoint.
CHOICES = ("best", "last", "all")
_MAX_MEMBERS = 100_000
_MAX_MANIFEST = 64 * 1024 * 1024
_CHUNK = 1024 * 1024
# Record keys that describe the original process, not the result: not copied on import.
_LOCAL_KEYS = frozenset({
    "version", "status", "created_at", "ended_at", "host", "user", "pid", "cwd",
    "checkpoints", "lease", "resumes", "removed_at", "imported_from", "allocated_by",
})


class ArchiveError(ConfigError):
    """An archive that is damaged, hostile or not a versionkit export (exit status 2)."""


@dataclass(frozen=True)
class ImportResult:
    """The version an import created."""

    version: int
    checkpoint_dir: Path
    log_dir: Path
    files: int
    bytes: int
    source: dict[str, Any]


# -- export -----------------------------------------------------------------------------


class _Hashing(io.RawIOBase):
    """Reads a file, hashing exactly what tarfile copies into the archive."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle = handle
        self.digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.digest.update(data)
        return data


def _choose(registry: Registry, n: int, which: set[str]) -> list[Path]:
    folder = registry.checkpoint_dir(n)
    in_folder = [c for c in registry.checkpoints(n) if c.path.parent == folder]
    if "all" in which:
        return [c.path for c in in_folder]
    chosen: list[Path] = []
    if "best" in which:
        best = registry.best("val_loss", "min", version=n)
        if best is not None and best.path.parent == folder:
            chosen.append(best.path)
    if "last" in which:
        last = folder / LAST_CHECKPOINT
        if last.exists():
            chosen.append(last)
        elif in_folder:
            chosen.append(max(in_folder, key=lambda c: (c.step or -1, c.path.name)).path)
    return list(dict.fromkeys(chosen))


def _files_under(base: Path, arc: str) -> Iterator[tuple[Path, str]]:
    """(file, archive name) of every regular file under ``base``; symlinks are skipped."""
    st = os.lstat(base)
    if stat.S_ISREG(st.st_mode):
        yield base, arc
        return
    if not stat.S_ISDIR(st.st_mode):
        return
    for folder, dirs, files in os.walk(base):
        dirs.sort()
        rel = Path(folder).relative_to(base)
        for name in sorted(files):
            path = Path(folder) / name
            if stat.S_ISREG(os.lstat(path).st_mode):
                yield path, "/".join([arc, *rel.parts, name])


def parse_choices(text: str) -> set[str]:
    """``"best,last"`` -> ``{"best", "last"}`` (``ConfigError`` for anything else)."""
    which = {item.strip() for item in text.split(",")}
    bad = sorted(which - set(CHOICES))
    if bad:
        raise ConfigError(f"--checkpoints: {bad[0]!r} is not one of {', '.join(CHOICES)}")
    return which


def export_version(registry: Registry, n: int, dest: Path, *,
                   checkpoints: str = "best,last", overwrite: bool = False) -> dict[str, Any]:
    """Write version ``n`` of ``registry`` to ``dest`` (a ``.tar.gz``), atomically.

    Returns the manifest (without the record's config, for printing).
    """
    which = parse_choices(checkpoints)
    dest = Path(dest)
    if dest.exists() and not overwrite:
        raise ConfigError(f"{dest} already exists; choose another name or pass --force")
    if not dest.parent.is_dir():
        raise ConfigError(f"cannot write {dest}: folder {dest.parent} does not exist")
    info = registry.get(n)
    if info.status == "untracked":
        raise ConfigError(f"version {n} has no record (an untracked folder); cannot export it")
    ck = registry.checkpoint_dir(n)
    members: list[tuple[Path, str]] = []
    for name in (CONFIG_FILE, SOURCE_CONFIG_FILE):
        if os.path.lexists(ck / name):  # regular files only: a symlink is not followed
            members += _files_under(ck / name, f"{PREFIX}/checkpoints/{name}")
    for path in _choose(registry, n, which):
        members += _files_under(path, f"{PREFIX}/checkpoints/{path.name}")
    if registry.log_dir(n).is_dir():
        members += _files_under(registry.log_dir(n), f"{PREFIX}/logs")
    files: dict[str, dict[str, Any]] = {}
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
            for path, arc in members:
                with open(path, "rb") as handle:
                    tinfo = tar.gettarinfo(fileobj=handle, arcname=arc)
                    tinfo.uid = tinfo.gid = 0
                    tinfo.uname = tinfo.gname = ""
                    hashing = _Hashing(handle)
                    tar.addfile(tinfo, hashing)
                files[arc[len(PREFIX) + 1:]] = {"size": tinfo.size,
                                                "sha256": hashing.digest.hexdigest()}
            manifest = {
                "format": FORMAT,
                "source": {
                    "host": socket.gethostname(),
                    "root": str(registry.root.resolve()),
                    "version": n,
                    "config_hash": info.config_hash,
                    "exported_at": _dt.datetime.now(_dt.timezone.utc).isoformat(
                        timespec="milliseconds"),
                },
                "record": info.record,
                "files": files,
            }
            data = json.dumps(manifest, indent=1, sort_keys=True, default=str).encode()
            tinfo = tarfile.TarInfo(f"{PREFIX}/{MANIFEST}")
            tinfo.size, tinfo.mode = len(data), 0o644
            tinfo.mtime = int(_dt.datetime.now().timestamp())
            tar.addfile(tinfo, io.BytesIO(data))
            raw.flush()
            os.fsync(raw.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, dest)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, VersionkitError):
            raise _os_error(f"cannot export version {n} to {dest}", exc) from None
        raise
    return {"version": n, "path": str(dest), "files": len(files),
            "bytes": sum(f["size"] for f in files.values()), "source": manifest["source"]}


def _os_error(what: str, exc: OSError) -> VersionkitError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(f"{what}: the disk is full (no space left on device)",
                             filename=exc.filename)
    return RegistryError(f"{what}: {exc.strerror or exc}")


# -- import -----------------------------------------------------------------------------


def _check_name(name: str) -> str:
    """The member's path below ``versionkit-export/``; ``ArchiveError`` when unsafe."""
    shown = name if len(name) <= 120 else name[:117] + "..."
    if "\x00" in name or "\\" in name:
        raise ArchiveError(f"refused: member {shown!r} has a NUL or backslash in its name")
    if name.startswith("/"):
        raise ArchiveError(f"refused: member {shown!r} has an absolute path")
    parts = name.split("/")
    if ".." in parts:
        raise ArchiveError(f"refused: member {shown!r} has a '..' component")
    parts = [p for p in parts if p not in ("", ".")]
    if not parts or parts[0] != PREFIX:
        raise ArchiveError(f"refused: member {shown!r} is outside {PREFIX}/ "
                           f"(not a versionkit export)")
    rel = parts[1:]
    if not rel:
        return ""
    if rel == [MANIFEST]:
        return MANIFEST
    if rel[0] == "logs":
        return "/".join(rel)
    if rel[0] == "checkpoints" and (len(rel) == 2 or (
            len(rel) > 2 and rel[1].endswith(CHECKPOINT_SUFFIX))):
        return "/".join(rel)
    raise ArchiveError(f"refused: unexpected member {shown!r}")


def _kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return f"a symbolic link (to {member.linkname!r})"
    if member.islnk():
        return f"a hard link (to {member.linkname!r})"
    if member.ischr() or member.isblk():
        return "a device file"
    if member.isfifo():
        return "a FIFO"
    return f"of tar type {member.type!r}"


def _open(path: Path) -> tarfile.TarFile:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ConfigError(f"archive {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read archive {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"archive {path} is not a regular file")
    try:
        return tarfile.open(path, mode="r:gz")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise ArchiveError(f"{path} is not a readable .tar.gz archive: {exc}") from None


@dataclass
class _Checked:
    manifest: dict[str, Any]
    files: dict[str, tuple[int, str]]  # rel -> (size, sha256)
    dirs: list[str]


def _validate(path: Path, free: int) -> _Checked:
    files: dict[str, tuple[int, str]] = {}
    dirs: list[str] = []
    manifest_bytes: bytes | None = None
    total = 0
    with _open(path) as tar:
        try:
            for count, member in enumerate(tar, 1):
                if count > _MAX_MEMBERS:
                    raise ArchiveError(f"refused: {path} has more than {_MAX_MEMBERS} members")
                rel = _check_name(member.name)
                if member.isdir():
                    dirs.append(rel)
                    continue
                if not member.isreg():
                    raise ArchiveError(f"refused: member {member.name!r} is {_kind(member)}")
                if rel in files or (rel == MANIFEST and manifest_bytes is not None):
                    raise ArchiveError(f"refused: member {member.name!r} appears twice")
                if "/" not in rel and rel != MANIFEST:
                    raise ArchiveError(f"refused: member {member.name!r} is a file where a "
                                       f"folder belongs")
                total += member.size
                if total > free:
                    raise ArchiveError(
                        f"refused: {path} unpacks to more than the {free} bytes free at the "
                        f"target")
                handle = tar.extractfile(member)
                assert handle is not None  # a regular member
                if rel == MANIFEST:
                    if member.size > _MAX_MANIFEST:
                        raise ArchiveError(f"refused: {path}'s manifest is too large")
                    manifest_bytes = handle.read()
                    continue
                digest = hashlib.sha256()
                while chunk := handle.read(_CHUNK):
                    digest.update(chunk)
                files[rel] = (member.size, digest.hexdigest())
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise ArchiveError(f"{path} is damaged: {exc}") from None
    for rel in files:
        parts = rel.split("/")
        for k in range(1, len(parts)):
            if "/".join(parts[:k]) in files:
                raise ArchiveError(f"refused: {'/'.join(parts[:k])} in {path} is both a file "
                                   f"and a folder")
    if manifest_bytes is None:
        raise ArchiveError(f"{path} has no {PREFIX}/{MANIFEST}: not a versionkit export")
    try:
        manifest = json.loads(manifest_bytes)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ArchiveError(f"{path}: its manifest is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArchiveError(f"{path}: unknown manifest format (expected format {FORMAT})")
    listed = manifest.get("files")
    if not isinstance(manifest.get("record"), dict) or not isinstance(listed, dict) or \
            not isinstance(manifest.get("source"), dict):
        raise ArchiveError(f"{path}: the manifest lacks its record, source or file list")
    for rel, (size, sha) in files.items():
        entry = listed.get(rel)
        if not isinstance(entry, dict) or entry.get("sha256") != sha or entry.get("size") != size:
            raise ArchiveError(f"refused: {rel} in {path} does not match the manifest")
    missing = sorted(set(listed) - set(files))
    if missing:
        raise ArchiveError(f"{path} is incomplete: {missing[0]} is listed but absent")
    return _Checked(manifest, files, dirs)


def _free_bytes(root: Path) -> int:
    probe = root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free
    except OSError:
        return 1 << 62


def _write(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path, digest: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(target, flags, 0o666)
    handle = tar.extractfile(member)
    assert handle is not None
    hashing = hashlib.sha256()
    with os.fdopen(fd, "wb") as out:
        while chunk := handle.read(_CHUNK):
            hashing.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    if hashing.hexdigest() != digest:
        raise ArchiveError(f"{target.name} changed while it was imported; import refused")


def import_version(path: Path, registry: Registry) -> ImportResult:
    """Check the whole archive at ``path``, then import it as a new version of ``registry``."""
    path = Path(path)
    checked = _validate(path, _free_bytes(registry.root))
    record: dict[str, Any] = checked.manifest["record"]
    source: dict[str, Any] = dict(checked.manifest["source"])
    origin = {
        "host": source.get("host"), "root": source.get("root"), "version": source.get("version"),
        "config_hash": source.get("config_hash", record.get("config_hash")),
        "exported_at": source.get("exported_at"), "created_at": record.get("created_at"),
        "user": record.get("user"), "archive": str(path.resolve()),
    }
    if isinstance(record.get("imported_from"), dict):  # an import of an import: the chain
        origin["via"] = record["imported_from"]
    config = record.get("config")
    info = registry.allocate(
        config=config if isinstance(config, dict) else None,
        config_hash=record.get("config_hash") if isinstance(record.get("config_hash"), str)
        else None,
        seed=record.get("seed") if isinstance(record.get("seed"), int) else None,
        extra={"imported_from": origin},
    )
    n = info.version
    written = 0
    try:
        with _open(path) as tar:
            for member in tar:
                rel = _check_name(member.name)
                if not member.isreg() or rel == MANIFEST:
                    continue
                top, _, below = rel.partition("/")
                base = info.checkpoint_dir if top == "checkpoints" else info.log_dir
                _write(tar, member, base / below, checked.files[rel][1])
                written += 1
    except (VersionNotFoundError, RegistryError, OSError, tarfile.TarError, EOFError,
            zlib.error, ArchiveError) as exc:
        registry.set_status(n, "failed", error=f"import from {path} failed: {exc}")
        what = f"importing {path} as version {n} failed (it is marked failed)"
        if isinstance(exc, OSError) and not isinstance(exc, VersionkitError):
            raise _os_error(what, exc) from None
        raise ArchiveError(f"{what}: {exc}") from None
    prefix = info.checkpoint_dir.relative_to(registry.root).as_posix()
    checkpoints = []
    for item in record.get("checkpoints") or ():
        name = str(item.get("path", "")).rsplit("/", 1)[-1] if isinstance(item, dict) else ""
        if name and f"checkpoints/{name}" in checked.files:
            checkpoints.append({**item, "path": f"{prefix}/{name}"})
    patch = {k: v for k, v in record.items() if k not in _LOCAL_KEYS and k != "config"}
    patch["checkpoints"] = checkpoints
    registry.modify(n, lambda _r: patch)
    status = record.get("status")
    from versionkit.registry import STATUSES

    final = status if status in STATUSES and status != "running" else "interrupted"
    registry.set_status(n, str(final), error=record.get("error") if final == "failed" else None)
    return ImportResult(n, info.checkpoint_dir, info.log_dir, written,
                        sum(size for size, _ in checked.files.values()), origin)
