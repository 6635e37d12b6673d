"""What keeps ``versionkit list`` cheap per version (issue 14: 100,000 versions).

No timings here (they live in benchmarks/bench_registry.py --versions): these tests pin
the mechanisms. A listing formats the raw records (no ``VersionInfo`` and no ``Path``
per version) with helpers that must say exactly what the typed view says; folders
without a record merge in by a walk; the local time of a stamp comes from a shift
remembered per hour; the table keeps one string per row; ``--json`` lines are encoded
strictly and walked for NaN only when refused.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from versionkit.cli import _common, _query, main
from versionkit.registry import Registry, VersionInfo, provenance
from versionkit.registry.views import display_status, record_json


def _odd_records() -> list[dict[str, Any]]:
    """Records as a registry may hold them, including hand-edited and half-written ones."""
    here, alive, gone = provenance.host(), os.getpid(), 2**22 + 12345
    good = {
        "version": 3, "status": "completed", "created_at": "2026-03-29T01:30:00.5+00:00",
        "host": here, "pid": alive, "git_commit": "0123456789abcdef", "git_dirty": True,
        "note": "a  long\nnote " * 6, "metrics": {"val_loss": 0.25}, "metrics_step": 40,
        "checkpoints": [
            {"path": "checkpoints/version_3/a.ckpt", "step": 10, "metrics": {"val_loss": 0.2}},
            {"path": "checkpoints/version_3/b.ckpt", "step": 30, "metrics": {"val_loss": 0.2}},
            {"path": "checkpoints/version_3/c.ckpt", "metrics": {"val_loss": float("nan")}},
            {"path": "checkpoints/version_3/d.ckpt", "step": True, "metrics": {"val_loss": 1}},
            "not a dict",
        ],
    }
    return [
        good,
        {**good, "version": 4, "status": "running", "pid": gone},  # dead
        {**good, "version": 5, "status": "running", "pid": alive},  # alive
        {**good, "version": 6, "status": "running", "pid": gone, "host": "elsewhere"},
        {**good, "version": 7, "status": "running", "pid": True, "git_dirty": 1},
        {**good, "version": 8, "status": None, "host": None, "git_commit": "", "note": ""},
        {"version": 9},
        {"version": 10, "status": "untracked", "metrics": {}, "checkpoints": []},
        {**good, "version": 11, "created_at": "not a time", "metrics": {"val_loss": "x"},
         "checkpoints": {"not": "a list"}, "git_commit": 5, "note": 3},
        {**good, "version": 12, "created_at": "2026-01-01T00:00:00", "metrics": [1]},
    ]


def _cells_through_the_view(info: VersionInfo, tags: list[str]) -> list[str]:
    """What ``versionkit list`` showed per version when it built a VersionInfo each."""
    from versionkit.curate.listing import best_of, last_of

    def at(m: tuple[float, int | None] | None) -> str:
        if m is None:
            return "-"
        return _common.number(m[0]) + (f"@{m[1]}" if m[1] is not None else "")

    note = info.record.get("note")
    note_text = " ".join(note.split()) if isinstance(note, str) and note else "-"
    return [
        str(info.version), info.display_status, _common.when(info.created_at),
        info.host or "-", _common.git_text(info), ",".join(tags) or "-",
        at(best_of(info.record)), at(last_of(info.record)),
        note_text if len(note_text) <= 40 else note_text[:37] + "...",
    ]


def test_the_raw_record_helpers_say_what_the_typed_view_says(tmp_path: Path) -> None:
    for record in _odd_records():
        n = record["version"]
        info = VersionInfo.from_record(record, tmp_path / f"c{n}", tmp_path / f"l{n}")
        assert display_status(record) == info.display_status, record
        assert record_json(record, str(tmp_path / f"c{n}"), str(tmp_path / f"l{n}")) == (
            info.to_json()
        ), record
        tags = {n: ["best", "x"]} if n % 2 else {}
        row = _query._row(dict(record), [])
        assert _query._cells(row, tags, []) == _cells_through_the_view(info, tags.get(n, []))
    statuses = [display_status(r) for r in _odd_records()]
    assert statuses[:4] == ["completed", "dead", "running", "running"], statuses


@pytest.mark.parametrize("backend", ["file", "sqlite"])
def test_list_builds_no_typed_view_per_version(
    tmp_path: Path, backend: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    uri = "file" if backend == "file" else f"sqlite:///{tmp_path}/r.db"
    root = tmp_path / "exp"
    reg = Registry(root, uri)
    for _ in range(5):
        reg.allocate(config={"lr": 0.1})
    reg.set_status(2, "completed")
    (root / "logs" / "version_7").mkdir(parents=True)
    reg.close()
    built: list[int] = []
    real = VersionInfo.from_record.__func__  # type: ignore[attr-defined]

    def counting(cls: type[VersionInfo], record: Any, *args: Any) -> VersionInfo:
        built.append(record["version"])
        info: VersionInfo = real(cls, record, *args)
        return info

    monkeypatch.setattr(VersionInfo, "from_record", classmethod(counting))
    for extra in ([], ["--json"], ["--status", "completed,untracked"], ["--sort=-created"],
                  ["--columns", "lr"]):
        assert main(["list", str(root), "--backend", uri, *extra]) == 0
        out = capsys.readouterr().out
        assert "untracked" in out and "completed" in out, (extra, out)
    assert built == [], "a listing formats the records themselves"


def test_records_merge_with_untracked_folders_in_both_orders(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "exp")
    for _ in range(6):
        reg.allocate()
    for n in (1, 3):  # records deleted by hand: their folders list as untracked
        (tmp_path / "exp" / ".versionkit" / "versions" / f"{n}.json").unlink()
    for n in (8, 20):
        (reg.log_dir(n)).mkdir(parents=True)
    expected = [(0, "running"), (1, "untracked"), (2, "running"), (3, "untracked"),
                (4, "running"), (5, "running"), (8, "untracked"), (20, "untracked")]
    got = [(r["version"], r["status"]) for r in reg.iter_records()]
    assert got == expected
    got = [(r["version"], r["status"]) for r in reg.iter_records(newest_first=True)]
    assert got == expected[::-1]
    assert [r["version"] for r in reg.iter_records(status="untracked", limit=3)] == [1, 3, 8]
    assert [v.version for v in reg.iter_versions()] == [n for n, _ in expected]


@pytest.fixture
def timezone() -> Iterator[None]:
    saved = os.environ.get("TZ")
    yield
    if saved is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = saved
    time.tzset()
    _common._LOCAL_SHIFTS.clear()


def _in_zone(zone: str) -> random.Random:
    """Switch this process to ``zone`` (skip where it has no zoneinfo), forget the cached
    shifts, and give a random stream of its own."""
    if not Path("/usr/share/zoneinfo", zone).exists():
        pytest.skip(f"no zoneinfo for {zone} here")
    os.environ["TZ"] = zone
    time.tzset()
    _common._LOCAL_SHIFTS.clear()
    return random.Random(zone)


@pytest.mark.parametrize(
    "zone", ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kathmandu"]
)
def test_local_time_of_a_stamp_is_what_astimezone_says(zone: str, timezone: None) -> None:
    rng = _in_zone(zone)
    transitions = [1711846800, 1730595600, 1743296400, 1761440400, 1712415600]
    for i in range(3000):
        if i % 2:
            stamp_at = rng.uniform(-2e9, 4e9)
        else:  # around daylight-saving changes, where an hour holds two offsets
            stamp_at = rng.choice(transitions) + rng.uniform(-7200, 7200)
        zone_of_stamp = dt.timezone(dt.timedelta(minutes=rng.choice([0, 60, -300, 330, 765])))
        stamp = dt.datetime.fromtimestamp(stamp_at, zone_of_stamp).isoformat()
        expected = dt.datetime.fromisoformat(stamp).astimezone().strftime("%Y-%m-%d %H:%M:%S")
        assert _common.when(stamp) == expected, stamp
    assert _common.when("not a time") == "not a time"
    assert _common.when(None) == "-"


def test_table_keeps_one_string_per_row_and_its_columns(tmp_path: Path) -> None:
    table = _common.Table(["A", "BB", "C"])
    table.add(["1", "x\x00y", ""])
    table.add(["333", "-", "z"])
    assert len(table) == 3 and all(isinstance(row, str) for row in table.rows)
    out = io.StringIO()
    table.write(out)
    assert out.getvalue().splitlines() == ["A    BB   C", "1    x\ufffdy", "333  -    z"]


def test_json_lines_are_strict_and_only_refused_ones_are_walked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    walked: list[Any] = []
    real = _common.finite

    def counting(value: Any) -> Any:
        walked.append(value)
        return real(value)

    monkeypatch.setattr(_common, "finite", counting)
    items = [{"a": 1.5}, {"b": [float("nan"), float("inf")]}, {"c": "é"}]
    out = io.StringIO()
    _common.dump_stream(iter(items), out)
    assert json.loads(out.getvalue()) == [{"a": 1.5}, {"b": [None, None]}, {"c": "é"}]
    assert walked and walked[0] is items[1], "the refused element is walked"
    assert not any(w is items[0] or w is items[2] for w in walked), "the others are not"
    assert "\n  " not in out.getvalue(), "one compact line per element"
    out = io.StringIO()
    _common.dump_stream(iter([]), out)
    assert out.getvalue() == "[]\n"


def test_a_stamp_the_c_library_cannot_place_shows_as_written(timezone: None) -> None:
    """Year 1 in a zone west of UTC: ``astimezone`` overflows; the listing used to end
    in a traceback there."""
    if not Path("/usr/share/zoneinfo/America/New_York").exists():
        pytest.skip("no zoneinfo for America/New_York here")
    os.environ["TZ"] = "America/New_York"
    time.tzset()
    _common._LOCAL_SHIFTS.clear()
    assert _common.when("0001-01-01T00:00:00+00:00") == "0001-01-01T00:00:00+00:00"


@pytest.mark.parametrize("zone", ["UTC", "Australia/Lord_Howe", "Asia/Kathmandu"])
def test_a_plain_stamp_is_read_by_its_hour_and_says_what_astimezone_says(
    zone: str, timezone: None
) -> None:
    """A stamp as ``isoformat`` writes it with an offset takes the per-hour local
    "YYYY-MM-DD HH" (when the shift is whole hours) and keeps its minutes and seconds."""
    rng = _in_zone(zone)
    for i in range(2000):
        stamp_at = rng.uniform(-2e9, 4e9) if i % 2 else 1743296400 + rng.uniform(-7200, 7200)
        zone_of_stamp = dt.timezone(dt.timedelta(minutes=rng.choice([0, 60, -300, 330, -59])))
        d = dt.datetime.fromtimestamp(stamp_at, zone_of_stamp)
        for spec in ("auto", "milliseconds", "seconds"):
            stamp = d.isoformat(timespec=spec)
            expected = dt.datetime.fromisoformat(stamp).astimezone().strftime("%Y-%m-%d %H:%M:%S")
            assert _common.when(stamp) == expected, stamp
    assert any(isinstance(k, str) for k in _common._LOCAL_SHIFTS), "hours of plain stamps"
    for odd in ("2026-02-30T10:00:00+00:00", "2026-01-01T24:00:00+00:00",
                "2026-01-01T10:00:00+25:00", "2026-01-01T10:61:00+00:00"):
        assert _common.when(odd) == odd  # not a time: shown as written


def test_table_rows_added_in_chunks_are_the_rows_added_one_by_one() -> None:
    rng = random.Random(5)
    alphabet = ["a", "bb", "", "\x00", "é", " ", "\x1f", "-", "ccc  "]
    rows = [[rng.choice(alphabet) * rng.randint(0, 3) for _ in range(4)]
            for _ in range(3 * _common._CHUNK + 17)]
    one, chunked = _common.Table(["W", "X", "Y", "Z"]), _common.Table(["W", "X", "Y", "Z"])
    for row in rows:
        one.add(row)
    chunked.add_rows(iter(rows))
    assert chunked.rows == one.rows and chunked.widths == one.widths
    assert any("\ufffd" in row for row in chunked.rows), "NUL in a cell shows as U+FFFD"
    with pytest.raises(ValueError):
        _common.Table(["W", "X"]).add_rows([["1", "2", "3"]])  # one cell too many


def test_folder_numbers_are_the_names_a_folder_scan_counts(tmp_path: Path) -> None:
    """``version_N`` with N 1 to 19 ASCII digits, nothing else, in batches of names."""
    from versionkit import _names
    from versionkit.layout import Layout
    from versionkit.registry import folders

    layout = Layout(tmp_path)
    names = ["version_0", "version_007", "version_", "version_x1", "xversion_3", "version_4\n",
             "version_\u0663", "version_5 ", "version_9999999999999999999",
             "version_10000000000000000000", "version_-1", "Version_8", "version_6.bak",
             *[f"version_{n}" for n in range(100, 100 + 3 * _names._BATCH)]]
    for i, name in enumerate(names):
        (layout.checkpoints if i % 2 else layout.logs).mkdir(exist_ok=True)
        ((layout.checkpoints if i % 2 else layout.logs) / name).mkdir()
    (layout.logs / "version_12").write_text("a file counts too")

    def counted(name: str) -> int | None:  # the rule, name by name
        digits = name[len("version_"):]
        ok = name.startswith("version_") and digits.isdigit() and digits.isascii()
        return int(digits) if ok and len(digits) <= 19 else None

    expected = {n for name in [*names, "version_12"] if (n := counted(name)) is not None}
    assert folders.Folders(layout).numbers() == expected
    assert {0, 7, 12, 9999999999999999999} <= expected and 10**19 not in expected
