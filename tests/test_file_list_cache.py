"""The file backend's list cache (issue 14): ``versionkit list`` uses a record's cached
summary only while the record file's stat matches, so a warm listing reads no record
file, and a changed record, a bad cache or a cache that cannot be written never shows
wrong rows or prints anything.
"""

from __future__ import annotations

import errno
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_list_summary import _FLAGS, _fill

from versionkit import _names
from versionkit.backends import _list_cache
from versionkit.backends import file as filemod
from versionkit.backends.base import Backend
from versionkit.backends.file import FileBackend
from versionkit.cli import main
from versionkit.errors import DiskFullError
from versionkit.layout import LIST_CACHE, STATE_DIR
from versionkit.registry import Registry

_ALL_FLAGS = [*_FLAGS, ["--limit", "5000"]]  # newest first through iter_summary_fields


@pytest.fixture(autouse=True)
def _trust_fresh_records(monkeypatch: pytest.MonkeyPatch) -> None:
    # The records here are seconds old; the racy rule is tested on its own below.
    monkeypatch.setattr(_list_cache, "RACY_NS", -(10**12))


def _list(root: Path, *extra: str, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["list", str(root), *extra]) == 0
    out, err = capsys.readouterr()
    assert err == "", err
    return out


def _expected(root: Path, capsys: pytest.CaptureFixture[str],
              monkeypatch: pytest.MonkeyPatch) -> dict[tuple[str, ...], str]:
    """Every row summarised from its whole record, no cache involved."""
    with monkeypatch.context() as m:
        m.setattr(FileBackend, "iter_summaries", Backend.iter_summaries)
        m.setattr(FileBackend, "iter_summary_fields", Backend.iter_summary_fields)
        return {tuple(f): _list(root, *f, capsys=capsys) for f in _ALL_FLAGS}


def _record_reads(monkeypatch: pytest.MonkeyPatch, root: Path) -> list[int]:
    """Counts every record file read, by version number."""
    reads: list[int] = []
    records = os.path.join(root, STATE_DIR, "versions")
    real_bytes, real_read = filemod._read_bytes, _list_cache._read_record

    def read_bytes(path: Path | str) -> bytes:
        data = real_bytes(path)
        if os.path.dirname(os.path.abspath(path)) == os.path.abspath(records):
            reads.append(int(os.path.basename(path)[:-5]))
        return data

    def read_record(backend: FileBackend, folder: int, n: int) -> Any:
        got = real_read(backend, folder, n)
        reads.append(n)
        return got

    monkeypatch.setattr(filemod, "_read_bytes", read_bytes)
    monkeypatch.setattr(_list_cache, "_read_record", read_record)
    return reads


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "exp"
    _fill(root, "file")
    return root


def _cache(root: Path) -> Path:
    return root / STATE_DIR / LIST_CACHE


def test_a_warm_listing_reads_no_record_and_lists_the_same(
    root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = _expected(root, capsys, monkeypatch)
    assert "dead" in expected[()] and "untracked" in expected[()]
    assert not _cache(root).exists()
    assert _list(root, capsys=capsys) == expected[()]  # cold: writes the cache
    cached = _list_cache.load(_cache(root))
    # Every record but those whose fields hold the summary separator (10, 13, 16).
    assert sorted(cached) == sorted(set(range(20)) - {10, 13, 16})
    reads = _record_reads(monkeypatch, root)
    for flags in _ALL_FLAGS:
        assert _list(root, *flags, capsys=capsys) == expected[tuple(flags)], flags
    # The full listings (all flags but --limit 5 and 0) read only the records without
    # a summary; --limit 5 walks the newest records down (19 to 16, and the folder 40).
    assert Counter(reads) == {10: 5, 13: 5, 16: 6, 17: 1, 18: 1, 19: 1}, reads
    before = _cache(root).stat()
    _list(root, capsys=capsys)
    after = _cache(root).stat()
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns), (
        "a listing without misses does not rewrite the cache"
    )


def test_a_changed_record_lists_its_new_content(
    root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _list(root, capsys=capsys)
    with Registry(root) as reg:  # through the registry, the same size
        reg.update(9, note="aaaa")
    _list(root, capsys=capsys)
    with Registry(root) as reg:
        reg.update(9, note="bbbb")
    assert "bbbb" in _list(root, capsys=capsys)
    records = root / STATE_DIR / "versions"
    # By hand: a new file of the same size renamed over the record, its mtime set back.
    path = records / "9.json"
    old = path.read_bytes()
    st = path.stat()
    new = old.replace(b"bbbb", b"cccc")
    assert len(new) == len(old)
    (records / "tmp").write_bytes(new)
    os.utime(records / "tmp", ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(records / "tmp", path)
    assert path.stat().st_mtime_ns == st.st_mtime_ns and path.stat().st_size == st.st_size
    assert "cccc" in _list(root, capsys=capsys)
    # In place (the same inode), its mtime set back: only its ctime says it changed.
    st = path.stat()
    with open(path, "r+b") as f:
        f.write(path.read_bytes().replace(b"cccc", b"dddd"))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
    assert "dddd" in _list(root, capsys=capsys)
    # A removed record leaves the listing and the cache; a new one joins both.
    path.unlink()
    _list(root, capsys=capsys)
    assert 9 not in _list_cache.load(_cache(root))
    with Registry(root) as reg:
        reg.allocate(config={"b": 2})
    out = _list(root, capsys=capsys)
    assert "dddd" not in out and "\n20 " in out
    assert 9 not in _list_cache.load(_cache(root)) and 20 in _list_cache.load(_cache(root))
    expected = _expected(root, capsys, monkeypatch)
    assert _list(root, capsys=capsys) == expected[()]


def _columns(data: bytes) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """The numbers, keys and summaries of a cache file."""
    lines = data.split(b"\n")
    n = int(lines[2])  # after the header and the journal mark
    assert lines[0] == _list_cache.HEADER.encode() and len(lines) == 3 * n + 4
    return lines[3 : 3 + n], lines[3 + n : 3 + 2 * n], lines[3 + 2 * n : 3 + 3 * n]


def _file(header: bytes, numbers: list[bytes], keys: list[bytes],
          summaries: list[bytes], count: int | None = None, mark: bool = True) -> bytes:
    n = len(numbers) if count is None else count
    return b"\n".join([header, *([b""] if mark else []), b"%d" % n, *numbers, *keys,
                        *summaries, b""])


_WRONG = b"s1\x1fWRONG" + b"\x1f" * 10  # a summary that would show a wrong row


@pytest.mark.parametrize("case", ["empty", "binary", "header", "version 1", "version 2", "tag",
                                  "truncated", "count", "extra line", "number", "stale",
                                  "folder"])
def test_a_bad_cache_lists_the_records_silently(
    root: Path, case: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    expected = _expected(root, capsys, monkeypatch)
    _list(root, capsys=capsys)
    cache = _cache(root)
    good = cache.read_bytes()
    numbers, keys, summaries = _columns(good)
    assert _list_cache.split(_WRONG.decode()) is not None
    header, wrong = _list_cache.HEADER.encode(), [_WRONG] * len(numbers)
    # The right keys everywhere, so that only the check named by the case keeps the
    # wrong summaries (or misplaced ones) out of the listing.
    data = {
        "empty": b"",
        "binary": b"\xff\xfe garbage \x00\x01",
        "header": _file(b"not a header", numbers, keys, wrong),
        "version 1": b"\n".join(  # the layout before, of another summary format
            [b"versionkit list cache 1 s0"]
            + [b"\t".join([n, *k.split(b":"), _WRONG]) for n, k in zip(numbers, keys, strict=True)]
        ) + b"\n",
        "version 2": _file(b"versionkit list cache 2 s0", numbers, keys, wrong, mark=False),
        "tag": _file(b"versionkit list cache 3 s0", numbers, keys, wrong),
        "truncated": good[: len(good) // 2 + 7],
        "count": _file(header, numbers, keys, [*summaries[1:], _WRONG], len(numbers) - 1),
        "extra line": _file(header, numbers, keys, [b"s1", *summaries]),
        "number": _file(header, [b"x", *numbers[1:]], keys, summaries),
        "stale": _file(header, numbers, keys, [b"s0\x1fx"] * len(numbers)),
        "folder": b"",
    }[case]
    if case == "folder":
        cache.unlink()
        cache.mkdir()
    else:
        cache.write_bytes(data)
    for flags in _ALL_FLAGS:
        assert _list(root, *flags, capsys=capsys) == expected[tuple(flags)], (case, flags)
    if case != "folder":
        (root.parent / "good").write_bytes(good)
        assert _list_cache.load(cache) == _list_cache.load(root.parent / "good")
        reads = _record_reads(monkeypatch, root)
        _list(root, capsys=capsys)
        assert sorted(reads) == [10, 13, 16], "rewritten whole"


def test_the_cache_of_the_versionkit_before_is_read_and_rewritten(
    root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = _expected(root, capsys, monkeypatch)
    _list(root, capsys=capsys)
    cache = _cache(root)
    numbers, keys, summaries = _columns(cache.read_bytes())
    cache.write_bytes(b"\n".join(  # one line per entry, as the versionkit before wrote it
        [b"versionkit list cache 1 s1", b"4\t1\t2", b"x\ty"]
        + [b"\t".join([n, *k.split(b":"), s])
           for n, k, s in zip(numbers, keys, summaries, strict=True)]
    ) + b"\n")
    before = _list_cache.load(cache)
    assert len(before) == 17 and before == {int(n): (k.decode(), s.decode()) for n, k, s in
                                            zip(numbers, keys, summaries, strict=True)}
    reads = _record_reads(monkeypatch, root)
    assert _list(root, capsys=capsys) == expected[()]
    assert sorted(reads) == [10, 13, 16], "only the records without a summary"
    assert cache.read_bytes().startswith(_list_cache.HEADER.encode() + b"\n")
    assert _list_cache.load(cache) == before


def test_a_cache_that_cannot_be_written_costs_time_only(
    root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = _expected(root, capsys, monkeypatch)
    for error in (PermissionError(errno.EACCES, "denied"), OSError(errno.EROFS, "read-only"),
                  DiskFullError("cannot write: the disk is full")):

        def fail(*_args: Any, error: OSError = error, **_kwargs: Any) -> None:
            raise error

        monkeypatch.setattr(_list_cache, "write_atomic", fail)
        for flags in _ALL_FLAGS:
            assert _list(root, *flags, capsys=capsys) == expected[tuple(flags)], (error, flags)
        assert not _cache(root).exists()
    monkeypatch.undo()
    monkeypatch.setattr(_list_cache, "RACY_NS", -(10**12))
    _list(root, capsys=capsys)
    assert _cache(root).exists()
    if os.geteuid() == 0:
        return  # root writes into read-only folders: the patched failures stand in
    state = root / STATE_DIR
    _cache(root).unlink()
    state.chmod(0o555)
    try:
        assert _list(root, capsys=capsys) == expected[()]
        assert not _cache(root).exists()
    finally:
        state.chmod(0o755)


def _decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts every record the listing decodes, by version number."""
    decoded: list[int] = []
    real = _list_cache._decode

    def decode(backend: FileBackend, n: int, data: bytes) -> Any:
        decoded.append(n)
        return real(backend, n, data)

    monkeypatch.setattr(_list_cache, "_decode", decode)
    return decoded


def test_a_record_changed_just_now_is_cached_by_its_bytes_not_its_stat(
    root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.undo()  # the real rule: the records were written just now
    with Registry(root) as reg:
        reg.update(9, note="aaaa")
    _list(root, capsys=capsys)
    cached = _list_cache.load(_cache(root))
    assert len(cached) == 17 and all(key.startswith("#") for key, _ in cached.values())
    # Changed in place in the same breath, the same size, its mtime set back: only its
    # bytes say it changed, and they do.
    path = root / STATE_DIR / "versions" / "9.json"
    st = path.stat()
    with open(path, "r+b") as f:
        f.write(path.read_bytes().replace(b"aaaa", b"dddd"))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    decoded = _decodes(monkeypatch)
    assert "dddd" in _list(root, capsys=capsys)
    assert sorted(decoded) == [9, 10, 13, 16], "the others are vouched for by their bytes"
    # Old enough, they are keyed by their stat.
    monkeypatch.setattr(_list_cache, "RACY_NS", -(10**12))
    _list(root, capsys=capsys)
    cached = _list_cache.load(_cache(root))
    assert len(cached) == 17 and not any(key.startswith("#") for key, _ in cached.values())
    # Deleting the cache is harmless.
    expected = _expected(root, capsys, monkeypatch)
    _cache(root).unlink()
    assert _list(root, capsys=capsys) == expected[()]


def test_summaries_with_tabs_and_line_breaks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "exp"
    with Registry(root) as reg:
        for host in ("a\tb", "c\nd", "e\r\x1cf\u2028g", "plain"):
            reg.backend.allocate(0, {"status": "completed", "host": host})
    expected = _expected(root, capsys, monkeypatch)
    assert _list(root, capsys=capsys) == expected[()]
    assert sorted(_list_cache.load(_cache(root))) == [0, 2, 3], "a line break is not cached"
    for flags in _ALL_FLAGS:
        assert _list(root, *flags, capsys=capsys) == expected[tuple(flags)], flags


def test_a_record_is_read_whole_however_its_size_changed_since_its_stat(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    data = b'{"a": "' + b"x" * 70000 + b'"}'
    path.write_bytes(data)
    for size in (len(data), 0, 5, len(data) - 1, len(data) + 1, 2 * len(data)):
        fd = os.open(path, os.O_RDONLY)
        try:
            assert _list_cache._read_sized(fd, size) == data, size
        finally:
            os.close(fd)


_JSON_TEXTS = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                 max_size=3),
    max_leaves=8,
).map(json.dumps)


@given(text=_JSON_TEXTS, before=st.sampled_from(["", " ", "\n", "\ufeff", "x", "\t\r"]),
       after=st.sampled_from(["", " ", "\n \t\r", "x", "}", "1", " 2", "\u2028", "\x00"]))
def test_records_decode_as_json_loads_decodes_them(text: str, before: str, after: str) -> None:
    """The listing's decoder gives what ``json.loads`` gives, or fails as it fails."""
    whole = before + text + after
    try:
        expected: Any = ("value", json.loads(whole))
    except ValueError as exc:
        expected = ("error", str(exc))
    try:
        got: Any = ("value", filemod._loads(whole))
    except ValueError as exc:
        got = ("error", str(exc))
    assert repr(got) == repr(expected)


def test_the_record_numbers_are_the_names_the_backend_counts(tmp_path: Path) -> None:
    """One regular expression per batch of names says what ``file._record_number`` says."""
    names = ["0.json", "007.json", "00.json", "12.json", "12.json.tmp", ".12.json", "x.json",
             "1e3.json", "-1.json", "\u0663.json", "9999999999999999999.json",
             "10000000000000000000.json", "5.JSON", "6.json ", "7", "json",
             *[f"{n}.json" for n in range(100, 100 + 2 * _names._BATCH)]]
    for name in names:
        (tmp_path / name).write_text("{}")
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        got = _list_cache._numbers(fd)
    finally:
        os.close(fd)
    expected = sorted(n for n in map(filemod._record_number, names) if n is not None)
    assert got == expected and {0, 12, 9999999999999999999} <= set(got)
