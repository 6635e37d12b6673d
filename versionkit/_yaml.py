"""Private YAML reader used by :mod:`versionkit.config`.

Reading follows YAML 1.2's core schema (``1e-4`` is a float; only ``true``/``false``
are booleans, ``yes``/``no``/``on``/``off`` stay strings), accepts only plain data
(mappings, sequences, strings, numbers, booleans, null), rejects duplicate keys, and
records where every value came from so that errors can say ``file:line:col``.
It builds values straight from the parser's event stream without recursion, so very
deep nesting and alias bombs fail fast with a clear message instead of exhausting the
stack or memory.
"""

from __future__ import annotations

import math
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from yaml.events import (
    AliasEvent,
    DocumentStartEvent,
    Event,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
)

from versionkit.errors import ConfigError

_CParser: Any
try:
    from yaml import cyaml

    _CParser = cyaml.CParser  # type: ignore[attr-defined]
except (ImportError, AttributeError):  # pragma: no cover - PyYAML wheels ship libyaml
    _CParser = None

__all__ = [
    "MAX_BYTES",
    "MAX_DEPTH",
    "MAX_NODES",
    "Loc",
    "Mark",
    "parse_yaml",
    "read_text_file",
    "resolve_plain",
]

Loc = tuple[str | int, ...]
Mark = tuple[int, int]  # 1-based (line, column)

MAX_DEPTH = 100  # nesting levels; real configs use fewer than ten
MAX_NODES = 200_000  # values after expanding aliases
MAX_BYTES = 16 * 1024 * 1024

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_TAG = "tag:yaml.org,2002:"
_NULLS = frozenset({"", "~", "null", "Null", "NULL"})
_TRUES = frozenset({"true", "True", "TRUE"})
_FALSES = frozenset({"false", "False", "FALSE"})
_INT10 = re.compile(r"[-+]?[0-9]+\Z")
_INT8 = re.compile(r"0o[0-7]+\Z")
_INT16 = re.compile(r"0x[0-9a-fA-F]+\Z")
_FLOAT = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?\Z")
_INF = re.compile(r"[-+]?\.(?:inf|Inf|INF)\Z")
_NAN = re.compile(r"\.(?:nan|NaN|NAN)\Z")
_NUMBER_START = frozenset("0123456789+-.")

_NOT_A_VALUE = object()
_NODE_EVENTS = frozenset({ScalarEvent, SequenceStartEvent, MappingStartEvent, SequenceEndEvent,
                          MappingEndEvent, AliasEvent})
_MERGE_KEY = object()  # a plain '<<' key: YAML's merge of another mapping's keys


class _Unresolvable(ValueError):
    pass


def resolve_plain(text: str) -> Any:
    """Return the YAML 1.2 core-schema value of an unquoted scalar.

    Args:
        text: the scalar exactly as written, without quotes.

    Returns:
        ``None``, a bool, an int, a float, or ``text`` itself when it is a string.
    """
    if text in _NULLS:
        return None
    if text in _TRUES:
        return True
    if text in _FALSES:
        return False
    first = text[0]
    if first in _NUMBER_START:
        if _INT10.match(text):
            try:
                return int(text, 10)
            except ValueError as exc:  # more digits than Python converts
                raise _Unresolvable(f"integer {text[:20]}... is too long") from exc
        if _FLOAT.match(text):
            return float(text)
        if _INF.match(text):
            return -math.inf if first == "-" else math.inf
        if _INT8.match(text):
            return int(text[2:], 8)
        if _INT16.match(text):
            return int(text[2:], 16)
    if _NAN.match(text):
        return math.nan
    return text


def _explicit(tag: str, text: str) -> Any:
    """Construct a scalar with an explicit standard tag (``!!str 5``)."""
    kind = tag[len(_TAG) :] if tag.startswith(_TAG) else None
    if kind == "str":
        return text
    value = resolve_plain(text)
    if kind == "null" and value is None:
        return None
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind in ("null", "bool", "int", "float"):
        raise _Unresolvable(f"{text!r} is not a valid !!{kind}")
    raise _Unresolvable(
        f"the tag {tag!r} is not allowed: configs are loaded safely and may only hold "
        "mappings, lists, strings, numbers, booleans and null"
    )


class _Frame:
    __slots__ = ("anchor", "container", "key", "key_marks", "merge_mark", "merges", "path",
                 "size", "start")

    def __init__(self, container: Any, path: Loc, anchor: str | None, start: Mark) -> None:
        self.container = container
        self.start = start
        self.merges: list[dict[str, Any]] = []
        self.merge_mark: Mark | None = None
        self.path = path
        self.anchor = anchor
        self.key: Any = _NOT_A_VALUE
        self.key_marks: dict[str, Mark] = {}
        self.size = 1


def _events(text: str) -> Iterator[Event]:
    parser: Any = _CParser(text) if _CParser is not None else _PyParser(text)
    try:
        while True:
            event = parser.get_event()
            if event is None:
                return
            yield event
    finally:
        parser.dispose()


class _PyParser(yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser):
    # Pure-Python event source when libyaml is missing; the parser is a state machine,
    # so it never recurses however deep the document nests.
    def __init__(self, stream: str) -> None:
        yaml.reader.Reader.__init__(self, stream)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)

    def dispose(self) -> None:
        self.states = []
        self.state = None


def _mark(event: Event) -> Mark:
    m: Any = event.start_mark
    return (m.line + 1, m.column + 1)


def _awaits_key(stack: list[_Frame]) -> bool:
    return bool(stack) and isinstance(stack[-1].container, dict) \
        and stack[-1].key is _NOT_A_VALUE


def _where(source: str, mark: Mark) -> str:
    return f"{source}:{mark[0]}:{mark[1]}"


def parse_yaml(text: str, source: str) -> tuple[Any, dict[Loc, Mark], bool]:
    """Parse one YAML document safely, recording where every value starts.

    Args:
        text: the YAML text.
        source: what to call it in error messages (a file path or a flag).

    Returns:
        ``(value, locations, empty)``: the plain Python value, a map from each value's
        path (mapping keys and list indices) to the 1-based (line, column) of its key or
        item, and whether the text held no document at all.

    Raises:
        ConfigError: malformed YAML, a disallowed tag, a duplicate key, a non-string key,
            several documents, nesting deeper than ``MAX_DEPTH`` or more than
            ``MAX_NODES`` values after expanding aliases.
    """
    if len(text) > MAX_BYTES:
        raise ConfigError(f"{source}: config text is {len(text)} bytes; the limit is {MAX_BYTES}")
    locs: dict[Loc, Mark] = {}
    anchors: dict[str, tuple[Any, int]] = {}
    stack: list[_Frame] = []
    root: Any = _NOT_A_VALUE
    documents = 0
    total = 0
    aliased = False

    def add(value: Any, mark: Mark, size: int, anchor: str | None) -> None:
        nonlocal root
        if anchor is not None:
            anchors[anchor] = (value, size)
        if not stack:
            root = value
            locs[()] = mark
            return
        frame = stack[-1]
        frame.size += size
        container = frame.container
        if isinstance(container, list):
            locs[(*frame.path, len(container))] = mark
            container.append(value)
        elif frame.key is _NOT_A_VALUE and value is _MERGE_KEY:
            if frame.merge_mark is not None:
                raise ConfigError(
                    f"{_where(source, mark)}: duplicate key '<<' "
                    f"(first at line {frame.merge_mark[0]}, again at line {mark[0]})"
                )
            frame.merge_mark = mark
            frame.key = _MERGE_KEY
        elif frame.key is _MERGE_KEY:
            sources = value if isinstance(value, list) else [value]
            if not sources or not all(isinstance(s, dict) for s in sources):
                raise ConfigError(
                    f"{_where(source, mark)}: '<<' merges a mapping or a list of mappings "
                    "(e.g. '<<: *defaults')"
                )
            frame.merges.extend(sources)
            frame.key = _NOT_A_VALUE
        elif frame.key is _NOT_A_VALUE:
            if not isinstance(value, str):
                kind = "null" if value is None else type(value).__name__
                hint = "" if isinstance(value, (list, dict)) else "; quote it if it is a name"
                raise ConfigError(
                    f"{_where(source, mark)}: mapping keys must be strings, got {value!r} "
                    f"({kind}){hint}"
                )
            if value in frame.key_marks:
                first = frame.key_marks[value]
                raise ConfigError(
                    f"{_where(source, mark)}: duplicate key {value!r} "
                    f"(first at line {first[0]}, again at line {mark[0]})"
                )
            frame.key_marks[value] = mark
            frame.key = value
        else:
            container[frame.key] = value
            locs[(*frame.path, frame.key)] = frame.key_marks[frame.key]
            frame.key = _NOT_A_VALUE

    def child_path() -> Loc:
        if not stack:
            return ()
        frame = stack[-1]
        if isinstance(frame.container, list):
            return (*frame.path, len(frame.container))
        if frame.key is _NOT_A_VALUE:
            raise ConfigError(
                f"{_where(source, mark)}: mapping keys must be plain strings, "
                "not lists or mappings"
            )
        return (*frame.path, "<<" if frame.key is _MERGE_KEY else frame.key)

    mark: Mark = (1, 1)
    try:
        for event in _events(text):
            kind = type(event)
            if kind not in _NODE_EVENTS:
                if kind is DocumentStartEvent:
                    documents += 1
                    if documents > 1:
                        raise ConfigError(
                            f"{_where(source, _mark(event))}: several YAML documents ('---'); "
                            "a config file holds exactly one mapping"
                        )
                continue
            mark = _mark(event)
            if isinstance(event, ScalarEvent):
                total += 1
                tag = event.tag
                try:
                    if tag is None and event.implicit[0] and event.value == "<<":
                        value = _MERGE_KEY if _awaits_key(stack) else "<<"
                    elif tag is None or tag == "!":
                        value = resolve_plain(event.value) if event.implicit[0] else event.value
                    else:
                        value = _explicit(tag, event.value)
                except _Unresolvable as exc:
                    raise ConfigError(f"{_where(source, mark)}: {exc}") from None
                add(value, mark, 1, event.anchor)
            elif isinstance(event, (SequenceStartEvent, MappingStartEvent)):
                tag = event.tag
                expected = "seq" if isinstance(event, SequenceStartEvent) else "map"
                if tag is not None and tag != "!" and tag != _TAG + expected:
                    raise ConfigError(
                        f"{_where(source, mark)}: the tag {tag!r} is not allowed: configs are "
                        "loaded safely and may only hold mappings, lists, strings, numbers, "
                        "booleans and null"
                    )
                if len(stack) >= MAX_DEPTH:
                    raise ConfigError(
                        f"{_where(source, mark)}: nesting deeper than {MAX_DEPTH} levels; "
                        "a config this deep is almost certainly a mistake"
                    )
                total += 1
                path = child_path()
                container: Any = [] if expected == "seq" else {}
                stack.append(_Frame(container, path, event.anchor, mark))
            elif isinstance(event, (SequenceEndEvent, MappingEndEvent)):
                frame = stack.pop()
                if frame.merges:  # explicit keys win, then earlier merged mappings
                    merge_at = frame.merge_mark or frame.start
                    for merged in frame.merges:
                        for key, item in merged.items():
                            if key not in frame.container:
                                frame.container[key] = item
                                locs[(*frame.path, key)] = merge_at
                add(frame.container, frame.start, frame.size, frame.anchor)
            elif isinstance(event, AliasEvent):
                anchor = str(event.anchor)
                if anchor not in anchors:
                    raise ConfigError(f"{_where(source, mark)}: unknown alias *{anchor}")
                value, size = anchors[anchor]
                aliased = aliased or size > 1
                total += size
                if total > MAX_NODES:
                    break
                add(value, mark, size, None)  # as a key, only an alias of a string is allowed
            if total > MAX_NODES:
                break
    except yaml.MarkedYAMLError as exc:
        pm = exc.problem_mark
        where = f"{source}:{pm.line + 1}:{pm.column + 1}" if pm is not None else source
        detail = exc.problem or "malformed YAML"
        if "maximum nesting depth" in detail:
            # PyYAML >= 6.0.4 has a nesting limit of its own that its scanner, which reads
            # ahead of the events checked above, can reach first: say the same thing.
            raise ConfigError(
                f"{where}: nesting deeper than {MAX_DEPTH} levels; "
                "a config this deep is almost certainly a mistake"
            ) from None
        context = f" ({exc.context})" if exc.context else ""
        raise ConfigError(f"{where}: invalid YAML: {detail}{context}") from None
    except yaml.reader.ReaderError as exc:
        raise ConfigError(
            f"{source}: invalid YAML: character {exc.character!r} at offset "
            f"{exc.position} is not allowed ({exc.reason})"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {exc}") from None
    if total > MAX_NODES:
        what = "after expanding aliases (*name) " if aliased else ""
        raise ConfigError(
            f"{_where(source, mark)}: the config holds more than {MAX_NODES} values "
            f"{what}(keys, items and scalars); versionkit refuses configs above that limit "
            "(versionkit._yaml.MAX_NODES)"
        )
    if root is _NOT_A_VALUE:
        return None, locs, True
    return root, locs, False


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def read_text_file(path: Path) -> str:
    """A config file's text (UTF-8), or a ConfigError saying why it cannot be read.

    Only a regular file of at most ``MAX_BYTES`` is read: a named pipe, a device such as
    ``/dev/zero`` or a growing file is refused at once instead of blocking or filling
    memory.
    """
    try:
        # O_NONBLOCK: opening a named pipe must not wait for a writer
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | _O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory; expected a YAML file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise ConfigError(f"config file {path} is a directory; expected a YAML file")
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(
                f"config file {path} is {_kind(info.st_mode)}; expected a regular YAML file"
            )
        if info.st_size > MAX_BYTES:
            raise ConfigError(
                f"config file {path} is {info.st_size} bytes; the limit is {MAX_BYTES}"
            )
        chunks: list[bytes] = []
        size = 0
        while True:  # at most MAX_BYTES + 1: the file may grow while it is read
            chunk = os.read(fd, min(1 << 20, MAX_BYTES + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_BYTES:
                raise ConfigError(
                    f"config file {path} is more than {MAX_BYTES} bytes; the limit is "
                    f"{MAX_BYTES}"
                )
        raw = b"".join(chunks)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte {raw[exc.start]:#04x} at offset "
            f"{exc.start})"
        ) from None
