"""``versionkit export`` / ``import``: the round trip, and hostile or damaged archives."""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from curate_support import checkpoint, cli, one_error_line, uri_fixture
from hypothesis import given
from hypothesis import strategies as st
from test_train_helpers import FILTERS, write_tiny

from versionkit.curate.archive import PREFIX, ArchiveError, _check_name
from versionkit.registry import Registry

vk_uri = uri_fixture()
pytestmark = [pytest.mark.filterwarnings(f) for f in FILTERS]

CONFIG = b"# the resolved config\nlr: 0.001 # kept byte for byte\nmodel:\n  dims: [8, 2]\n"


def _source(root: Path, uri: str) -> tuple[Registry, int]:
    """An experiment whose version 1 is completed with 3 checkpoints, last.ckpt and logs."""
    reg = Registry(root, uri)
    reg.allocate(config={"lr": 0.5})
    n = reg.allocate(config={"lr": 0.001, "model": {"dims": [8, 2]}}, seed=7).version
    (reg.checkpoint_dir(n) / "config.yaml").write_bytes(CONFIG)
    (reg.checkpoint_dir(n) / "config.source.yaml").write_bytes(b"lr: 1e-3\n")
    for step, loss in ((2, 0.9), (4, 0.3), (6, 0.5)):
        checkpoint(reg, n, step, loss, size=100 + step)
    (reg.checkpoint_dir(n) / "last.ckpt").write_bytes(b"L" * 50)
    reg.add_checkpoint(n, reg.checkpoint_dir(n) / "last.ckpt", step=6)
    (reg.log_dir(n) / "samples").mkdir()
    (reg.log_dir(n) / "samples" / "s.png").write_bytes(b"png")
    (reg.log_dir(n) / "events.out.tfevents.1").write_bytes(b"ev" * 10)
    reg.log_metrics(n, {"val_loss": 0.5}, step=6)
    reg.update(n, note="lr sweep winner")
    reg.set_status(n, "completed")
    return reg, n


def test_round_trip(vk_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, n = _source(tmp_path / "a" / "exp", vk_uri)
    run = cli(capsys, vk_uri)
    archive = tmp_path / "v1.tar.gz"
    code, out, _ = run("export", str(src.root), str(n), str(archive))
    assert code == 0 and out.startswith(f"exported version {n} to {archive}: 6 files")
    with tarfile.open(archive) as tar:
        names = sorted(m.name[len(PREFIX) + 1:] for m in tar)
    assert names == [
        "checkpoints/config.source.yaml", "checkpoints/config.yaml", "checkpoints/last.ckpt",
        "checkpoints/step_00000004-val_loss_0.3000.ckpt", "logs/events.out.tfevents.1",
        "logs/samples/s.png", "manifest.json",
    ]

    dest = Registry(tmp_path / "b" / "exp2", vk_uri)
    for _ in range(3):
        dest.allocate()
    code, out, _ = run("import", str(archive), str(dest.root), "--json")
    data = json.loads(out)
    assert code == 0 and data["version"] == 3 and data["files"] == 6
    m = data["version"]
    ck = dest.checkpoint_dir(m)
    assert (ck / "config.yaml").read_bytes() == CONFIG, "config.yaml byte-identical"
    assert (ck / "config.source.yaml").read_bytes() == b"lr: 1e-3\n"
    assert (dest.log_dir(m) / "samples" / "s.png").read_bytes() == b"png"
    info = dest.get(m)
    origin = info.record["imported_from"]
    assert origin["root"] == str(src.root.resolve()) and origin["version"] == n
    assert origin["config_hash"] == src.get(n).config_hash == info.config_hash
    assert origin["host"]
    assert info.status == "completed" and info.seed == 7
    assert info.record["note"] == "lr sweep winner"
    assert info.metrics == {"val_loss": 0.5} and info.record["config"]["lr"] == 0.001
    assert {c["path"] for c in info.record["checkpoints"]} == {
        f"checkpoints/version_{m}/last.ckpt",
        f"checkpoints/version_{m}/step_00000004-val_loss_0.3000.ckpt",
    }
    best = dest.best()
    assert best is not None and best.path == ck / "step_00000004-val_loss_0.3000.ckpt"
    shown = json.loads(run("show", f"{dest.root}@latest", "--json")[1])
    assert shown["version"] == m and shown["imported_from"]["version"] == n

    # --checkpoints all / last, and the refusals that change nothing
    code, _, _ = run("export", f"{src.root}@{n}", str(tmp_path / "all.tar.gz"),
                     "--checkpoints", "all")
    with tarfile.open(tmp_path / "all.tar.gz") as tar:
        assert sum(m.name.endswith(".ckpt") for m in tar) == 4
    code, _, _ = run("export", str(src.root), "latest", str(tmp_path / "last.tar.gz"),
                     "--checkpoints", "last")
    with tarfile.open(tmp_path / "last.tar.gz") as tar:
        assert [m.name for m in tar if m.name.endswith(".ckpt")] == [
            f"{PREFIX}/checkpoints/last.ckpt"]
    code, _, err = run("export", str(src.root), str(n), str(archive))
    assert code == 2 and "already exists" in one_error_line(err)
    code, _, err = run("export", str(src.root), str(n), str(tmp_path / "x.tgz"),
                       "--checkpoints", "some")
    assert code == 2 and "'some' is not one of" in one_error_line(err)
    code, _, err = run("export", str(src.root), "9", str(tmp_path / "y.tgz"))
    assert code == 3 and "version 9 does not exist" in one_error_line(err)
    assert not (tmp_path / "x.tgz").exists() and not (tmp_path / "y.tgz").exists()
    assert not list(tmp_path.glob(".*.tmp"))


# -- hostile and damaged archives -------------------------------------------------------


def _member(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE,
            link: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data


def _repack(src: Path, dest: Path, extra: list[tuple[tarfile.TarInfo, bytes]],
            edit: Callable[[str, bytes], bytes] = lambda _n, d: d) -> Path:
    with tarfile.open(src) as old, tarfile.open(dest, "w:gz") as new:
        for member, data in extra:
            new.addfile(member, io.BytesIO(data))
        for m in old:
            body = old.extractfile(m).read() if m.isreg() else b""  # type: ignore[union-attr]
            body = edit(m.name, body)
            m.size = len(body)
            new.addfile(m, io.BytesIO(body))
    return dest


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else b"/")
            for p in sorted(root.rglob("*"))}


def _hostile(good: Path, tmp: Path) -> dict[str, tuple[Path, str]]:
    def rp(name: str, extra: list[tuple[tarfile.TarInfo, bytes]], **kw: object) -> Path:
        return _repack(good, tmp / f"{name}.tar.gz", extra, **kw)  # type: ignore[arg-type]

    def tamper(name: str, data: bytes) -> bytes:
        return data + b"!" if name.endswith("last.ckpt") else data

    truncated = tmp / "truncated.tar.gz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    garbage = tmp / "garbage.tar.gz"
    garbage.write_bytes(os.urandom(4096))
    plain = tmp / "plain.tar.gz"
    plain.write_bytes(gzip.compress(b"not a tar at all" * 100))
    evil = str(tmp / "evil")
    return {
        "absolute": (rp("absolute", [_member(evil, b"x")]), "absolute path"),
        "dotdot": (rp("dotdot", [_member(f"{PREFIX}/logs/../../../evil", b"x")]), "'..'"),
        "symlink": (rp("symlink", [_member(f"{PREFIX}/logs/link", kind=tarfile.SYMTYPE,
                                           link="/etc/passwd")]), "symbolic link"),
        "hardlink": (rp("hardlink", [_member(f"{PREFIX}/logs/hard", kind=tarfile.LNKTYPE,
                                             link="/etc/passwd")]), "hard link"),
        "device": (rp("device", [_member(f"{PREFIX}/logs/dev", kind=tarfile.CHRTYPE)]),
                   "device file"),
        "fifo": (rp("fifo", [_member(f"{PREFIX}/logs/fifo", kind=tarfile.FIFOTYPE)]), "FIFO"),
        "outside": (rp("outside", [_member("other/file", b"x")]), "outside"),
        "unexpected": (rp("unexpected", [_member(f"{PREFIX}/state/next.json", b"{}")]),
                       "unexpected member"),
        "unlisted": (rp("unlisted", [_member(f"{PREFIX}/logs/extra", b"x")]),
                     "does not match the manifest"),
        "tampered": (rp("tampered", [], edit=tamper), "does not match the manifest"),
        "duplicate": (rp("duplicate", [_member(f"{PREFIX}/checkpoints/config.yaml", CONFIG)]),
                      "appears twice"),
        "file-and-folder": (rp("faf", [_member(f"{PREFIX}/logs/samples", b"x")]),
                            "both a file and a folder"),
        "no-manifest": (rp("nomanifest", [], edit=lambda n, d: d if "manifest" not in n
                           else b"[]"), "unknown manifest format"),
        "truncated": (truncated, "damaged"),
        "garbage": (garbage, "not a readable .tar.gz"),
        "plain-gzip": (plain, ".tar.gz"),
    }


def test_hostile_and_damaged_archives_change_nothing(
    vk_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, n = _source(tmp_path / "a" / "exp", vk_uri)
    run = cli(capsys, vk_uri)
    good = tmp_path / "good.tar.gz"
    assert run("export", str(src.root), str(n), str(good))[0] == 0
    dest = Registry(tmp_path / "b" / "exp2", vk_uri)
    dest.allocate()
    before_tree, before_list = _tree(tmp_path / "b"), [v.to_json() for v in dest.list()]
    for name, (archive, why) in _hostile(good, tmp_path).items():
        code, out, err = run("import", str(archive), str(dest.root))
        assert code == 2, (name, out, err)
        assert why in one_error_line(err), (name, err)
        assert _tree(tmp_path / "b") == before_tree, name
        assert [v.to_json() for v in dest.list()] == before_list, name
        assert not (tmp_path / "evil").exists()
    assert not (tmp_path / "fresh").exists()
    code, _, err = run("import", str(tmp_path / "absolute.tar.gz"), str(tmp_path / "fresh"))
    assert code == 2 and not (tmp_path / "fresh").exists(), "a refusal creates no root"
    code, _, err = run("import", str(tmp_path / "nosuch.tar.gz"), str(dest.root))
    assert code == 2 and "does not exist" in one_error_line(err)
    # the good one still imports, as the next number; an import of it keeps the chain
    assert run("import", str(good), str(dest.root))[0] == 0
    assert dest.latest() is not None and dest.latest().version == 1
    again = tmp_path / "again.tar.gz"
    assert run("export", str(dest.root), "1", str(again))[0] == 0
    assert run("import", str(again), str(dest.root))[0] == 0
    chain = dest.get(2).record["imported_from"]
    assert chain["version"] == 1 and chain["via"]["version"] == n


@pytest.mark.slow
def test_export_import_then_inference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real (2-step) training run, exported, imported elsewhere, sampled from ROOT2@latest."""
    from fractalgen import sample, train
    from versionkit.run import RUN_ENV

    monkeypatch.delenv(RUN_ENV, raising=False)
    monkeypatch.delenv("VERSIONKIT_BACKEND", raising=False)
    monkeypatch.chdir(tmp_path)
    write_tiny(tmp_path)
    assert train.main(["--config", "config/tiny.yaml", "--max_steps", "2"]) == 0
    src = tmp_path / "outputs" / "tiny"
    capsys.readouterr()
    run = cli(capsys, "file")
    assert run("export", f"{src}@latest", str(tmp_path / "v.tar.gz"))[0] == 0
    dest = tmp_path / "elsewhere" / "tiny"
    Registry(dest).allocate()
    code, out, err = run("import", str(tmp_path / "v.tar.gz"), str(dest), "--json")
    assert code == 0, err
    m = json.loads(out)["version"]
    assert m == 1
    original = (src / "checkpoints/version_0/config.yaml").read_bytes()
    assert (dest / f"checkpoints/version_{m}/config.yaml").read_bytes() == original
    # inference.py's --checkpoint resolves ROOT@latest to the imported version's best
    target = f"{dest}@latest"
    rc = sample.main(["--checkpoint", target, "--mode", "unconditional", "--num_images",
                      "2", "--output_dir", str(tmp_path / "png")])
    assert rc == 0, capsys.readouterr().err
    assert len(list((tmp_path / "png").glob("*.png"))) >= 2


_NAME_PARTS = st.sampled_from(
    [PREFIX, "checkpoints", "logs", "..", ".", "", "a.ckpt", "x", "/", "\\\\", "manifest.json",
     "config.yaml", "\x00", "~", "..."]
)


@given(st.lists(_NAME_PARTS, min_size=1, max_size=6), st.booleans())
def test_an_accepted_member_name_stays_inside_the_version(parts: list[str], lead: bool) -> None:
    name = ("/" if lead else "") + "/".join(parts)
    try:
        rel = _check_name(name)
    except ArchiveError:
        return
    base = Path("/v/checkpoints/version_3")
    target = Path(os.path.normpath(base / rel))
    assert target == base or base in target.parents, (name, rel)
    assert ".." not in rel.split("/") and not rel.startswith("/")


def test_a_full_disk_during_export_is_one_line_and_leaves_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from versionkit.curate import archive

    src, n = _source(tmp_path / "a" / "exp", "file")

    def full(_fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(archive.os, "fsync", full)
    code, _, err = cli(capsys, "file")("export", str(src.root), str(n), str(tmp_path / "v.tgz"))
    assert code == 1 and "the disk is full" in one_error_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_export_follows_no_symlink(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, n = _source(tmp_path / "a" / "exp", "file")
    secret = tmp_path / "secret.txt"
    secret.write_text("not for sharing")
    (src.checkpoint_dir(n) / "config.source.yaml").unlink()
    (src.checkpoint_dir(n) / "config.source.yaml").symlink_to(secret)
    (src.log_dir(n) / "leak").symlink_to(secret)
    assert cli(capsys, "file")("export", str(src.root), str(n), str(tmp_path / "v.tgz"))[0] == 0
    with tarfile.open(tmp_path / "v.tgz") as tar:
        names = [m.name for m in tar]
        assert all(tar.extractfile(m).read() != b"not for sharing"  # type: ignore[union-attr]
                   for m in tar if m.isreg())
    assert f"{PREFIX}/checkpoints/config.source.yaml" not in names
    assert f"{PREFIX}/logs/leak" not in names
