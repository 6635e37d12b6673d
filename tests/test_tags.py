"""Tags and references: names, atomic moves across processes, ROOT@REF everywhere."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from curate_support import checkpoint, cli, one_error_line, uri_fixture
from hypothesis import given
from hypothesis import strategies as st

from versionkit.curate import refs
from versionkit.errors import ConfigError, VersionNotFoundError
from versionkit.registry import Registry

vk_uri = uri_fixture()


@pytest.mark.parametrize(
    "name", ["prod", "Best-2024.v1", "a", "rc_1", "x" * 64, "latest2", "bestish"]
)
def test_valid_tag_names(name: str) -> None:
    assert refs.check_tag_name(name) == name


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "empty"),
        ("3", "number"),
        ("007", "number"),
        ("1e3", "number"),
        ("-1", "number"),
        (".5", "number"),
        ("version_3", "number"),
        ("latest", "reserved"),
        ("BEST", "reserved"),
        ("Inf", "reserved"),
        ("nan", "reserved"),
        ("a b", "not a valid"),
        ("a/b", "not a valid"),
        ("../x", "number"),
        ("a@b", "not a valid"),
        ("x" * 65, "not a valid"),
        ("tæg", "not a valid"),
    ],
)
def test_invalid_tag_names(name: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        refs.check_tag_name(name)


@given(st.text(min_size=1, max_size=20))
def test_a_valid_tag_never_reads_as_a_number_or_keyword(name: str) -> None:
    try:
        refs.check_tag_name(name)
    except ConfigError:
        return
    assert not name.isdigit() and name.lower() not in refs.KEYWORDS
    try:
        float(name)
    except ValueError:
        pass
    else:
        raise AssertionError(f"{name!r} reads as a number")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("outputs/exp@prod", ("outputs/exp", "prod")),
        ("outputs/exp@3", ("outputs/exp", "3")),
        ("outputs/exp", ("outputs/exp", None)),
        ("/home/me@corp/outputs/exp", ("/home/me@corp/outputs/exp", None)),
        ("/home/me@corp/exp@best", ("/home/me@corp/exp", "best")),
        ("@prod", ("@prod", None)),
    ],
)
def test_split_reference(text: str, expected: tuple[str, str | None]) -> None:
    assert refs.split_reference(text) == expected


def test_tag_move_remove_and_references(
    vk_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "exp"
    reg = Registry(root, vk_uri)
    for _ in range(3):
        reg.allocate(config={"lr": 0.1})
    checkpoint(reg, 1, 10, 0.5)
    run = cli(capsys, vk_uri)

    assert run("tag", str(root), "0", "prod")[:2] == (0, "tagged version 0 as prod\n")
    moved = "moved tag prod from version 0 to version 2\n"
    assert run("tag", str(root), "2", "prod")[:2] == (0, moved)
    assert run("tag", f"{root}@best", "winner")[0] == 0
    assert refs.tags(reg) == {"prod": 2, "winner": 1}

    code, out, _ = run("show", f"{root}@prod", "--json")
    data = json.loads(out)
    assert (code, data["version"], data["tags"]) == (0, 2, ["prod"])
    assert json.loads(run("show", str(root), "winner", "--json")[1])["version"] == 1
    assert json.loads(run("show", f"{root}@latest", "--json")[1])["version"] == 2
    assert json.loads(run("show", f"{root}@0", "--json")[1])["version"] == 0

    rows = json.loads(run("list", str(root), "--json")[1])
    assert [r["tags"] for r in rows] == [[], ["winner"], ["prod"]]
    rows = json.loads(run("list", str(root), "--json", "--tag", "prod")[1])
    assert [r["version"] for r in rows] == [2]
    table = run("list", str(root))[1]
    assert "prod" in table.splitlines()[3] and "winner" in table.splitlines()[2]

    code, _, err = run("show", f"{root}@nosuch")
    line = one_error_line(err)
    assert code == 3 and "'nosuch'" in line and "tags: prod, winner" in line
    code, _, err = run("tag", str(root), "1", "best")
    assert code == 2 and "reserved" in one_error_line(err)
    code, _, err = run("tag", str(root), "1", "42")
    assert code == 2 and "looks like a version number" in one_error_line(err)
    code, _, err = run("tag", str(root), "9", "prod")
    assert code == 3 and "version 9 does not exist" in one_error_line(err)
    assert refs.tags(reg) == {"prod": 2, "winner": 1}, "a refusal changes nothing"

    assert run("tag", str(root), "--remove", "prod")[:2] == (
        0, "removed tag prod (it named version 2)\n")
    code, _, err = run("tag", str(root), "--remove", "prod")
    assert code == 3 and "tags: winner" in one_error_line(err)
    code, _, err = run("tag", str(root), "0", "winner", "--remove")
    assert code == 2 and "names version 1, not 0" in one_error_line(err)
    assert run("tag", str(root), "1", "winner", "--remove")[1] == (
        "removed tag winner (it named version 1)\n")
    assert run("tag", str(root), "2", "prod")[0] == 0
    assert run("tag", str(root), "prod", "--remove")[0] == 0
    assert json.loads(run("tag", str(root), "--json")[1]) == {}


def test_references_resolve(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "exp", "file")
    with pytest.raises(VersionNotFoundError, match="no versions yet"):
        refs.resolve_version(reg, "latest")
    for _ in range(2):
        reg.allocate()
    with pytest.raises(VersionNotFoundError, match="so no 'best'"):
        refs.resolve_version(reg, "best")
    checkpoint(reg, 0, 5, 0.25)
    checkpoint(reg, 1, 5, 0.75)
    assert [refs.resolve_version(reg, r) for r in ("0", "latest", "best", "LATEST")] == [0, 1, 0, 1]
    with pytest.raises(ConfigError, match="not a version reference"):
        refs.resolve_version(reg, "-3")
    with pytest.raises(VersionNotFoundError, match="it has no tags"):
        refs.resolve_version(reg, "prod")


# Concurrent tag moves from real processes: versionkit.testing_curate.CurateContract, run
# against every backend in tests/backends/.
