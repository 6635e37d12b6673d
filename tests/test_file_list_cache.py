"""The file backend's list cache (issue 14): ``versionkit list`` uses a record's cached
summary only while the record file's stat matches, so a warm listing reads no record
file, and a changed record, a bad cache or a cache that cannot be written never shows
wrong rows or prints anything.
"""

from __future__ import annotations

import errno
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from test_list_summary import _FLAGS, _fill

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
    real_bytes, real_stat = filemod._read_bytes, _list_cache._read_stat

    def note(path: Path | str) -> None:
        if os.path.dirname(os.path.abspath(path)) == os.path.abspath(records):
            reads.append(int(os.path.basename(path)[:-5]))

    def read_bytes(path: Path | str) -> bytes:
        data = real_bytes(path)
        note(path)
        return data

    def read_stat(path: str) -> tuple[bytes, os.stat_result]:
        got = real_stat(path)
        note(path)
        return got

    monkeypatch.setattr(filemod, "_read_bytes", read_bytes)
    monkeypatch.setattr(_list_cache, "_read_stat", read_stat)
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


_BAD_CACHES: list[bytes] = [
    b"", b"\xff\xfe garbage \x00\x01", b"versionkit list cache 0 s1",
    b"versionkit list cache 1 s0", b"not a header",
]


@pytest.mark.parametrize("case", ["empty", "binary", "old", "tag", "header", "truncated",
                                  "bad lines", "stale", "folder"])
def test_a_bad_cache_lists_the_records_silently(
    root: Path, case: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    expected = _expected(root, capsys, monkeypatch)
    _list(root, capsys=capsys)
    cache = _cache(root)
    good = cache.read_bytes()
    lines = good.split(b"\n")
    if case == "folder":
        cache.unlink()
        cache.mkdir()
    elif case == "truncated":
        cache.write_bytes(good[: len(good) // 2 + 7])
    elif case == "bad lines":
        cache.write_bytes(b"\n".join([
            lines[0], b"3\tx\t1\t2\t3\ts1", b"4\t1\t2", b"", b"\t\t\t\t\t",
            b"5\t1\t2\t3\t4\ts1\x1fcompleted", *lines[1:4], b"x\ty",
        ]))
    elif case == "stale":  # the right keys, summaries of another format or none
        cache.write_bytes(b"\n".join(
            [lines[0]] + [b"\t".join([*ln.split(b"\t")[:5], b"s0\x1fx"]) for ln in lines[1:-1]]
        ))
    else:
        data = _BAD_CACHES[["empty", "binary", "old", "tag", "header"].index(case)]
        if case in ("old", "tag", "header"):  # the right keys, but lines that would lie
            wrong = b"s1\x1fWRONG" + b"\x1f" * 10
            assert _list_cache.split(wrong.decode()) is not None
            data = b"\n".join([data] + [b"\t".join([*ln.split(b"\t")[:5], wrong])
                                        for ln in lines[1:-1]]) + b"\n"
        cache.write_bytes(data)
    for flags in _ALL_FLAGS:
        assert _list(root, *flags, capsys=capsys) == expected[tuple(flags)], (case, flags)
    if case != "folder":
        (root.parent / "good").write_bytes(good)
        assert _list_cache.load(cache) == _list_cache.load(root.parent / "good")
        reads = _record_reads(monkeypatch, root)
        _list(root, capsys=capsys)
        assert sorted(reads) == [10, 13, 16], "rewritten whole"


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


def test_a_record_changed_just_now_is_not_cached(
    root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.undo()  # the real rule: the records were written just now
    _list(root, capsys=capsys)
    assert _list_cache.load(_cache(root)) == {}
    monkeypatch.setattr(_list_cache, "RACY_NS", -(10**12))
    _list(root, capsys=capsys)
    assert len(_list_cache.load(_cache(root))) == 17
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
