"""The file backend's list journal (issue 14): every record write journals the record's
list summary, so that the first listing after writes through the API decodes no record
whose bytes the journal vouches for; and no journal line, however stale, cut, forged
or unwritable, ever shows a wrong row, prints anything or fails a write.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_file_list_cache import (  # noqa: F401 - the autouse fixture applies here too
    _ALL_FLAGS,
    _cache,
    _decodes,
    _expected,
    _list,
    _trust_fresh_records,
)
from test_list_summary import _fill
from test_registry_crash_points import kill_at

from versionkit.backends import _list_cache, _list_journal
from versionkit.backends.file import FileBackend
from versionkit.layout import LIST_JOURNAL, STATE_DIR
from versionkit.registry import Registry, summary
from versionkit.registry.summary import join, record_fields

REPO = Path(__file__).resolve().parents[1]
NO_SUMMARY = [10, 13, 16]  # _fill's records whose fields hold the summary separator


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "exp"
    _fill(root, "file")
    return root


def _journal(root: Path) -> Path:
    return root / STATE_DIR / LIST_JOURNAL


def _lines(root: Path) -> list[str]:
    return _journal(root).read_text().split("\n")[1:-1]


def test_every_record_write_journals_the_summary_of_the_bytes_written(tmp_path: Path) -> None:
    root = tmp_path / "exp"
    with Registry(root) as reg:
        n = reg.allocate(config={"lr": 0.1}).version
        reg.set_status(n, "running")
        reg.log_metrics(n, {"val_loss": 0.5}, step=10)
        reg.add_checkpoint(n, root / "checkpoints" / f"version_{n}" / "a.ckpt", step=10,
                           metrics={"val_loss": 0.5})
        reg.update(n, note="a note with spaces")
        m = reg.allocate(config={"lr": 0.2}).version
        writes = 6
        backend = reg.backend
        assert isinstance(backend, FileBackend)
        journal, mark = _list_journal.load(_journal(root), "")
    assert _journal(root).read_text().startswith(_list_journal.PREFIX)
    assert len(_lines(root)) == writes, "one line per record write"
    assert sorted(journal) == [n, m]
    for v in (n, m):
        data = (backend.records_dir / f"{v}.json").read_bytes()
        record = backend.get(v)
        assert record is not None
        digest, summary = journal[v]
        assert summary == join(record_fields(record))
        assert digest == _list_journal.digest(data, summary)
    assert "a note with spaces" in journal[n][1]
    # The mark is where reading stopped: nothing after it, until the next write.
    assert _list_journal.load(_journal(root), mark) == ({}, mark)
    with Registry(root) as reg:
        reg.update(m, note="later")
    after, _ = _list_journal.load(_journal(root), mark)
    assert list(after) == [m] and "later" in after[m][1]


def test_a_listing_without_a_cache_decodes_only_what_the_journal_cannot_vouch_for(
    root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = _expected(root, capsys, monkeypatch)
    assert not _cache(root).exists()
    decoded = _decodes(monkeypatch)
    for flags in _ALL_FLAGS:
        _cache(root).unlink(missing_ok=True)
        assert _list(root, *flags, capsys=capsys) == expected[tuple(flags)], flags
    # Only the records without a summary (each full listing) and, for --limit 5, the
    # newest down to 16.
    assert sorted(set(decoded)) == NO_SUMMARY, decoded
    # Without the journal every record is decoded, and the rows are the same.
    _journal(root).unlink()
    _cache(root).unlink()
    decoded.clear()
    assert _list(root, capsys=capsys) == expected[()]
    assert sorted(decoded) == list(range(20))


def test_a_record_changed_behind_the_journal_lists_its_new_content(
    root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with Registry(root) as reg:
        reg.update(9, note="aaaa")
        reg.update(8, note="aaaa")
    path = root / STATE_DIR / "versions" / "9.json"
    # In place, the same size, its mtime set back, in the same clock tick as its line:
    # only its bytes differ from those the line was made from.
    st = path.stat()
    with open(path, "r+b") as f:
        f.write(path.read_bytes().replace(b"aaaa", b"dddd"))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    # By another tool: the record of version 8 rewritten whole, same size.
    other = root / STATE_DIR / "versions" / "8.json"
    other.write_bytes(other.read_bytes().replace(b"aaaa", b"eeee"))
    decoded = _decodes(monkeypatch)
    out = _list(root, capsys=capsys)
    assert "dddd" in out and "eeee" in out and "aaaa" not in out
    assert sorted(decoded) == sorted([8, 9, *NO_SUMMARY])
    assert out == _expected(root, capsys, monkeypatch)[()]


_WRONG = "s1\x1fWRONG" + "\x1f" * 10  # a summary that would show a wrong row


def _forge(root: Path, case: str) -> None:
    """Damage the journal as ``case`` says (every case keeps the right records)."""
    path = _journal(root)
    text = path.read_bytes()
    lines = text.split(b"\n")
    data = (root / STATE_DIR / "versions" / "5.json").read_bytes()
    good_5 = [line for line in lines if line.startswith(b"5 ")][-1]
    digest_5 = good_5.split(b" ")[1]
    forged = {
        # A wrong summary with the digest of the right one, or of no summary.
        "wrong summary": b"5 " + digest_5 + b" " + _WRONG.encode() + b"\n",
        "digest of the bytes alone": b"5 %s %s\n" % (
            _list_journal.digest(data, "").encode(), _WRONG.encode()),
        # Another version's line, renumbered.
        "renumbered": b"5 " + [line for line in lines if line.startswith(b"6 ")][-1][2:] + b"\n",
        # A crash cut the last line; the next one was appended to it.
        "cut and merged": good_5[: len(good_5) // 2] + b"6 " + digest_5 + b" " + _WRONG.encode()
        + b"\n",
        "cut at the end": good_5[:-3],
        "garbage": b"\xff\xfe\x00 7 \n\n 8 x y\n-1 " + b"0" * 32 + b" " + _WRONG.encode() + b"\n",
        "short digest": b"5 " + digest_5[:-1] + b" " + _WRONG.encode() + b"\n",
    }
    if case == "header":
        path.write_bytes(b"versionkit list journal 2 0 x\n" + b"\n".join(lines[1:]))
    elif case == "no header":
        path.write_bytes(b"\n".join(lines[1:]))
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "folder":
        path.unlink()
        path.mkdir()
    else:
        with open(path, "ab") as f:
            f.write(forged[case])


_CASES = ["wrong summary", "digest of the bytes alone", "renumbered", "cut and merged",
          "cut at the end", "garbage", "short digest", "header", "no header", "empty", "folder"]


@pytest.mark.parametrize("case", _CASES)
def test_a_bad_journal_costs_time_only(
    root: Path, case: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    expected = _expected(root, capsys, monkeypatch)
    _forge(root, case)
    for flags in _ALL_FLAGS:
        _cache(root).unlink(missing_ok=True)
        assert _list(root, *flags, capsys=capsys) == expected[tuple(flags)], (case, flags)
    # Writes go on, and list right.
    with Registry(root) as reg:
        reg.update(5, note="after")
    expected = _expected(root, capsys, monkeypatch)
    _cache(root).unlink(missing_ok=True)
    assert _list(root, capsys=capsys) == expected[()]
    assert "after" in expected[()]
    if case != "folder":  # a journal no listing can read is started anew by the next write
        assert 5 in _list_journal.load(_journal(root), "")[0]


def test_a_journal_that_cannot_be_written_never_fails_a_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "exp"
    with Registry(root) as reg:
        reg.allocate()
    journal = _journal(root)
    # A symlink planted in its place is not written through.
    target = tmp_path / "elsewhere"
    target.write_bytes(b"keep")
    journal.unlink()
    journal.symlink_to(target)
    with Registry(root) as reg:
        assert reg.allocate().version == 1
        reg.update(1, note="n")
    assert target.read_bytes() == b"keep"
    # A folder in its place, a full disk.
    journal.unlink()
    journal.mkdir()
    with Registry(root) as reg:
        assert reg.allocate().version == 2
    journal.rmdir()
    real_write = os.write

    def full(fd: int, data: Any) -> int:
        if bytes(data[:2]) in (b"ve", b"3 "):  # the journal's header and lines
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full)
    with Registry(root) as reg:
        assert reg.allocate().version == 3
    monkeypatch.undo()
    # A summary that fails (a bug) does not fail the write either: no line, the record in.
    lines = _lines(root)

    def broken(record: Any) -> Any:
        raise RuntimeError("a bug in the summary")

    monkeypatch.setattr(summary, "record_fields", broken)
    with Registry(root) as reg:
        reg.update(3, note="kept")
        assert reg.get(3).record["note"] == "kept"
    assert _lines(root) == lines
    monkeypatch.undo()
    monkeypatch.setattr(_list_cache, "RACY_NS", -(10**12))
    out = _list(root, capsys=capsys)
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["0", "1", "2", "3"]
    assert out == _expected(root, capsys, monkeypatch)[()]


def test_the_journal_is_rewritten_with_one_line_per_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(_list_journal, "COMPACT_AT", 3000)
    root = tmp_path / "exp"
    sizes = []
    with Registry(root) as reg:
        for _ in range(4):
            reg.allocate()
        for i in range(200):
            reg.log_metrics(i % 4, {"val_loss": 1.0 / (i + 1)}, step=i)
            sizes.append(_journal(root).stat().st_size)
    # Bounded: never past the threshold and twice the size after the last rewrite
    # (4 lines), plus one line.
    assert max(sizes) < 2 * 3000 and min(sizes[-20:]) < 3000
    journal, _ = _list_journal.load(_journal(root), "")
    assert sorted(journal) == [0, 1, 2, 3]
    expected = _expected(root, capsys, monkeypatch)
    decoded = _decodes(monkeypatch)
    assert _list(root, capsys=capsys) == expected[()]
    assert decoded == [], "every version is still journaled after the rewrites"


def test_a_listing_reads_only_the_lines_after_its_mark(
    root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _list(root, capsys=capsys)
    loaded: list[int] = []
    real = _list_journal.load

    def load(path: Path, mark: str) -> Any:
        got = real(path, mark)
        loaded.append(len(got[0]))
        return got

    monkeypatch.setattr(_list_journal, "load", load)
    _list(root, capsys=capsys)
    with Registry(root) as reg:
        reg.update(3, note="x")
        reg.update(4, note="y")
    expected = _expected(root, capsys, monkeypatch)
    loaded.clear()
    decoded = _decodes(monkeypatch)
    assert _list(root, capsys=capsys) == expected[()]
    assert loaded == [2] and sorted(decoded) == NO_SUMMARY
    # Rewritten (a new header), the journal is read from its start again.
    monkeypatch.setattr(_list_journal, "COMPACT_AT", 0)
    with Registry(root) as reg:
        reg.update(3, note="z")
    loaded.clear()
    _list(root, capsys=capsys)
    assert loaded == [17], "one line per version with a summary"


def test_a_writer_killed_before_its_line_leaves_the_listing_right(
    root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _list(root, capsys=capsys)
    kill_at(
        "journal:before-append",
        f"""
        from versionkit.registry import Registry
        Registry({str(root)!r}).update(7, note="killed after its record")
        """,
    )
    _cache(root).unlink()
    decoded = _decodes(monkeypatch)
    out = _list(root, capsys=capsys)
    assert "killed after its record" in out
    assert sorted(decoded) == sorted([7, *NO_SUMMARY]), "its old line does not match"
    assert out == _expected(root, capsys, monkeypatch)[()]


def test_many_writers_at_once_with_listings_in_between(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(_list_cache, "RACY_NS", 3_000_000_000)  # the real rule
    root = tmp_path / "exp"
    with Registry(root) as reg:
        for _ in range(4):
            reg.allocate()
    script = textwrap.dedent(
        f"""
        import sys
        from versionkit.registry import Registry
        w = int(sys.argv[1])
        with Registry({str(root)!r}) as reg:
            for i in range(25):
                reg.update(w, note=f"writer {{w}} write {{i}}")
                reg.allocate(config={{"by": w, "i": i}})
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    writers = [subprocess.Popen([sys.executable, "-c", script, str(w)], env=env)
               for w in range(4)]
    while any(p.poll() is None for p in writers):
        _list(root, capsys=capsys)  # listings between and during the writes
    assert [p.returncode for p in writers] == [0, 0, 0, 0]
    expected = _expected(root, capsys, monkeypatch)
    assert all(f"writer {w} write 24" in expected[()] for w in range(4))
    decoded = _decodes(monkeypatch)
    assert _list(root, capsys=capsys) == expected[()]
    _cache(root).unlink()
    assert _list(root, capsys=capsys) == expected[()]
    assert decoded == [], "every line of every writer made it"


_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("note"), st.integers(0, 3), st.sampled_from(["aa", "bb", "a b", ""])),
        st.tuples(st.just("by hand"), st.integers(0, 3), st.sampled_from(["aa", "bb"])),
        st.tuples(st.just("cut journal"), st.integers(0, 400), st.just("")),
        st.tuples(st.sampled_from(["drop cache", "drop journal", "list"]), st.just(0),
                  st.just("")),
    ),
    max_size=12,
)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_OPS)
def test_any_history_of_writes_edits_and_damage_lists_as_the_records_say(
    ops: list[tuple[str, int, str]], tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    # The real rule: edits by hand land in their record's clock tick, as they can.
    monkeypatch.setattr(_list_cache, "RACY_NS", 3_000_000_000)
    root = tmp_path_factory.mktemp("history") / "exp"
    with Registry(root) as reg:
        for v in range(4):
            reg.allocate(config={"v": v})
            reg.update(v, note="aa")
    for op, v, arg in ops:
        path = root / STATE_DIR / "versions" / f"{v}.json"
        if op == "note":
            with Registry(root) as reg:
                reg.update(v, note=arg)
        elif op == "by hand":  # a same-size edit in place, its mtime set back
            before = path.stat()
            data = path.read_bytes()
            swapped = data.replace(b'"aa"', b'"cc"') if b'"aa"' in data else data.replace(
                b'"bb"', b'"dd"')
            with open(path, "r+b") as f:
                f.write(swapped)
            os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        elif op == "cut journal" and _journal(root).exists():
            data = _journal(root).read_bytes()
            _journal(root).write_bytes(data[: len(data) - v])
        elif op == "drop cache":
            _cache(root).unlink(missing_ok=True)
        elif op == "drop journal":
            _journal(root).unlink(missing_ok=True)
        elif op == "list":
            _list(root, capsys=capsys)
    expected = _expected(root, capsys, monkeypatch)
    for flags in ([], ["--sort", "created"]):
        assert _list(root, *flags, capsys=capsys) == expected[tuple(flags)], (ops, flags)
