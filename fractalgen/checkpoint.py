"""Reading checkpoints safely: ``torch.load(..., weights_only=True)`` and nothing else.

Every failure is one of two exceptions whose ``str()`` is one line saying why:
:class:`UnsafeCheckpoint` (the file needs arbitrary unpickling, which could run code)
or :class:`UnreadableCheckpoint` (anything else: not a regular file, truncated, corrupt,
random bytes, a zip bomb). Nothing in the file is ever executed; the pickle is only
inspected (``pickletools``) to say which import an unsafe file asks for.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import re
import stat
import warnings
import zipfile
from pathlib import Path
from typing import Any

__all__ = ["UnreadableCheckpoint", "UnsafeCheckpoint", "load_checkpoint"]

_ZIP_MAGIC = b"PK\x03\x04"
_SCAN_LIMIT = 64 * 1024 * 1024  # bytes of pickle inspected to name an unsafe import
_ZIP_SLACK = 1024 * 1024  # torch stores records uncompressed: declared sizes fit the file
_STRING_OPS = frozenset({"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE",
                         "SHORT_BINSTRING", "BINSTRING", "STRING"})
_PUT_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_GET_OPS = frozenset({"GET", "BINGET", "LONG_BINGET"})
# torch's own types that a plain checkpoint of tensors names; anything else is foreign
_SAFE_PREFIXES = ("torch.", "collections.OrderedDict", "builtins.set", "builtins.frozenset",
                  "builtins.bytearray", "builtins.slice", "builtins.complex", "_codecs.encode")


class UnsafeCheckpoint(Exception):
    """The file needs arbitrary unpickling (which could run code); ``str()`` says why."""


class UnreadableCheckpoint(Exception):
    """The file is truncated, corrupt or not a checkpoint; ``str()`` says why."""


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    marker = "WeightsUnpickler error:"
    if marker in text:  # torch wraps the real reason in a paragraph about weights_only
        text = text.split(marker, 1)[1].strip()
    first = text.splitlines()[0].strip() if text else ""
    found = re.match(r"Unsupported global: GLOBAL (\S+)", first)
    if found:
        return f"it would import {found.group(1)}, which is not an allowed global"
    if isinstance(exc, KeyError | IndexError) or not first:
        return f"corrupt data ({type(exc).__name__}: {first or 'no detail'})"
    return first[:300]


def _pickle_bytes(path: Path, head: bytes) -> bytes | None:
    """The pickle inside a checkpoint (``data.pkl`` of a zip, or the whole raw file)."""
    try:
        if head.startswith(_ZIP_MAGIC):
            with zipfile.ZipFile(path) as archive:
                for info in archive.infolist():
                    if info.filename.endswith("data.pkl") and info.file_size <= _SCAN_LIMIT:
                        return archive.read(info)
            return None
        with open(path, "rb") as handle:
            return handle.read(_SCAN_LIMIT)
    except Exception:  # a broken zip: torch's own error says more
        return None


def _imports_in(data: bytes) -> list[str]:
    """The ``module.name`` globals a pickle would import, found without running it."""
    found: list[str] = []
    strings: list[str] = []
    memo: dict[Any, str] = {}
    try:
        for op, arg, _pos in pickletools.genops(io.BytesIO(data)):
            name = op.name
            if name in ("GLOBAL", "INST") and isinstance(arg, str):
                found.append(arg.replace(" ", "."))
            elif name in _STRING_OPS and isinstance(arg, str | bytes):
                strings.append(arg if isinstance(arg, str) else arg.decode("latin-1"))
            elif name == "MEMOIZE" and strings:
                memo[len(memo)] = strings[-1]
            elif name in _PUT_OPS and strings:
                memo[arg] = strings[-1]
            elif name in _GET_OPS and arg in memo:
                strings.append(memo[arg])
            elif name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
    except Exception:  # a truncated or corrupt pickle: keep what was found before it
        pass
    return found


def _unsafe_import(path: Path, head: bytes) -> str | None:
    data = _pickle_bytes(path, head)
    if data is None:
        return None
    for name in _imports_in(data):
        if not name.startswith(_SAFE_PREFIXES):
            return name
    return None


def _check_zip(path: Path, size: int) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            declared = sum(info.file_size for info in archive.infolist())
    except Exception:
        return  # torch's reader reports a broken archive in its own words
    if declared > size + _ZIP_SLACK:
        raise UnreadableCheckpoint(
            f"its zip records claim {declared} bytes but the file has {size} (corrupt, or "
            "a zip bomb: torch.save stores records uncompressed)"
        )


def load_checkpoint(path: str | Path, *, mmap: bool = False) -> Any:
    """Load ``path`` on the CPU with ``weights_only=True``.

    Args:
        path: the checkpoint file.
        mmap: map the tensors' storage instead of reading it (zip checkpoints only; an
            old-format file is read normally).

    Raises:
        UnsafeCheckpoint: it holds objects other than tensors and plain containers.
        UnreadableCheckpoint: it cannot be read at all; ``str()`` says why, in one line.
    """
    import torch

    path = Path(path)
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise UnreadableCheckpoint("it is not a regular file")
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError as exc:
        raise UnreadableCheckpoint(f"cannot read it: {exc.strerror or exc}") from None
    if not head:
        raise UnreadableCheckpoint("the file is empty")
    is_zip = head.startswith(_ZIP_MAGIC)
    if is_zip:
        _check_zip(path, info.st_size)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": noise here
            return torch.load(path, map_location="cpu", weights_only=True,
                              mmap=mmap and is_zip)
    except pickle.UnpicklingError as exc:
        unsafe = _unsafe_import(path, head)
        reason = _reason(exc)
        if unsafe is not None or "global" in reason.lower():
            what = f"it would import {unsafe}" if unsafe else reason
            raise UnsafeCheckpoint(
                f"{what}; loading it needs arbitrary unpickling, which could run code"
            ) from None
        raise UnreadableCheckpoint(reason) from None
    except MemoryError:
        raise UnreadableCheckpoint("it asks for more memory than there is") from None
    except Exception as exc:  # torch's readers raise anything on hostile bytes
        unsafe = _unsafe_import(path, head)
        if unsafe is not None:
            raise UnsafeCheckpoint(
                f"it would import {unsafe}; loading it needs arbitrary unpickling, which "
                "could run code"
            ) from None
        raise UnreadableCheckpoint(_reason(exc)) from None
