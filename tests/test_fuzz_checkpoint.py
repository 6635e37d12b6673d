"""The one safe checkpoint reader (fractalgen/checkpoint.py) against unreadable,
truncated, mutated, random and hostile files (issue 10, "Checkpoint reading").

Every such file must give UnreadableCheckpoint or UnsafeCheckpoint with one line saying
why, never another exception, and never run anything; through ``main.py --resume`` and
``inference.py`` that is exit != 0 and one ``error:`` line. Seeded, a few hundred files.
"""

from __future__ import annotations

import io
import os
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from fractalgen.checkpoint import (  # noqa: E402
    UnreadableCheckpoint,
    UnsafeCheckpoint,
    load_checkpoint,
)

pytestmark = pytest.mark.filterwarnings(
    "ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning"
)


class _Evil:
    """Unpickling this runs code: it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def _good_bytes() -> bytes:
    buf = io.BytesIO()
    torch.save(
        {
            "state_dict": {"model.w": torch.arange(12, dtype=torch.float32).reshape(3, 4),
                           "model.b": torch.zeros(3)},
            "loops": {"fit_loop": {"epoch_progress": {"current": {"completed": 1}}}},
            "global_step": 7,
            "hyper_parameters": {"config": {"optim": {"lr": 0.001}, "names": ["a", "b"]}},
        },
        buf,
    )
    return buf.getvalue()


GOOD = _good_bytes()


def check(path: Path, mmap: bool = False) -> Exception | None:
    """Load ``path``; a failure must be one of the two promised errors, in one line."""
    try:
        load_checkpoint(path, mmap=mmap)
    except (UnreadableCheckpoint, UnsafeCheckpoint) as exc:
        text = str(exc)
        assert text and "\n" not in text and len(text) < 400, text
        assert exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__)
        return exc
    return None


def _mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    kind = rng.randrange(5)
    if kind == 0:  # flip a few bytes anywhere
        for _ in range(rng.randint(1, 8)):
            out[rng.randrange(len(out))] = rng.randrange(256)
    elif kind == 1:  # truncate
        del out[rng.randrange(len(out)):]
    elif kind == 2:  # change bytes inside the pickle, keeping the zip valid
        start = max(0, data.find(b"\x80", data.find(b"data.pkl") + 8))  # its PROTO opcode
        for _ in range(rng.randint(1, 4)):
            out[min(len(out) - 1, start + rng.randrange(200))] = rng.randrange(256)
    elif kind == 3:  # delete or duplicate a slice
        a = rng.randrange(len(out))
        b = min(len(out), a + rng.randint(1, 64))
        out[a:b] = out[a:b] * rng.randint(0, 2)
    else:  # overwrite a run with zeros or 0xff
        a = rng.randrange(len(out))
        out[a : a + rng.randint(1, 32)] = bytes([rng.choice((0, 255))]) * rng.randint(1, 32)
    return bytes(out)


def _random_file(rng: random.Random) -> bytes:
    kind = rng.randrange(4)
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randint(1, 2000)))
    if kind == 1:
        return "".join(chr(rng.randrange(32, 127)) for _ in range(rng.randint(1, 500))).encode()
    if kind == 2:  # a zip that is not a checkpoint
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as archive:
            names = ["data.pkl", "x/data/0", "archive/data.pkl", "version", "archive/version"]
            for name in rng.sample(names, rng.randint(1, 4)):
                archive.writestr(name, bytes(rng.randrange(256) for _ in range(50)))
        return buf.getvalue()
    # a raw pickle of plain data, some of it hostile
    value = rng.choice([[1, 2, 3], {"a": (1, 2)}, "text", 3.5, None, {1, 2}, b"bytes"])
    return pickle.dumps(value, protocol=rng.randrange(6))


def test_seeded_mutations_and_random_files(tmp_path: Path) -> None:
    rng = random.Random(20261201)
    path = tmp_path / "f.ckpt"
    kinds: dict[str, int] = {}
    for i in range(400):
        data = _mutate(rng, GOOD) if i < 300 else _random_file(rng)
        path.write_bytes(data)
        exc = check(path, mmap=bool(i % 2))
        kinds[type(exc).__name__] = kinds.get(type(exc).__name__, 0) + 1
    assert kinds.get("UnreadableCheckpoint", 0) > 200, kinds  # the mutations did break files


@settings(max_examples=150, deadline=None, derandomize=True)
@given(st.binary(max_size=3000), st.booleans())
def test_any_bytes(tmp_path_factory: pytest.TempPathFactory, data: bytes, mmap: bool) -> None:
    path = tmp_path_factory.mktemp("any") / "f.ckpt"
    path.write_bytes(data)
    check(path, mmap)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.integers(0, len(GOOD) - 1), st.integers(0, 255)), max_size=6),
       st.integers(0, len(GOOD)))
def test_any_edit_of_a_good_checkpoint(
    tmp_path_factory: pytest.TempPathFactory, edits: list[tuple[int, int]], keep: int
) -> None:
    data = bytearray(GOOD)
    for at, value in edits:
        data[at] = value
    path = tmp_path_factory.mktemp("edit") / "f.ckpt"
    path.write_bytes(bytes(data[:keep]))
    check(path)


def test_the_issues_examples(tmp_path: Path) -> None:
    text = tmp_path / "text.ckpt"
    text.write_text("this is not a checkpoint\n")
    assert isinstance(check(text), UnreadableCheckpoint)
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    assert str(check(empty)) == "the file is empty"
    assert str(check(tmp_path)) == "it is not a regular file"
    fifo = tmp_path / "pipe.ckpt"
    os.mkfifo(fifo)
    assert str(check(fifo)) == "it is not a regular file"  # and did not block
    assert str(check(tmp_path / "nope.ckpt")) == "cannot read it: No such file or directory"


def test_zip_bomb_is_refused_before_reading(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", GOOD)
        archive.writestr("archive/data/0", b"\0" * 50_000_000)
    bomb = tmp_path / "bomb.ckpt"
    bomb.write_bytes(buf.getvalue())
    exc = check(bomb)
    assert isinstance(exc, UnreadableCheckpoint) and "zip bomb" in str(exc)


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_hostile_pickles_are_unsafe_and_never_run(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "PWNED"
    raw = tmp_path / "raw.ckpt"
    raw.write_bytes(pickle.dumps({"state_dict": _Evil(marker)}, protocol=protocol))
    zipped = tmp_path / "zipped.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": _Evil(marker)}, zipped)
    for path in (raw, zipped):
        for mmap in (False, True):
            exc = check(path, mmap)
            assert isinstance(exc, UnsafeCheckpoint), exc
            assert str(exc).startswith("it would import "), exc
            assert str(exc).split(";")[0].endswith(".exec"), exc
            assert "mmap" not in str(exc)
    rng = random.Random(protocol)
    hostile = [raw.read_bytes(), zipped.read_bytes()]
    for i in range(40):  # broken hostile files stay harmless
        raw.write_bytes(_mutate(rng, hostile[i % 2]))
        check(raw)
    assert not marker.exists(), "the malicious payload ran"


# ------------------------------------------------------------- through the two CLIs


def _broken(rng: random.Random, count: int, tmp_path: Path) -> list[bytes]:
    """``count`` seeded mutations of a good checkpoint that the loader refuses."""
    out: list[bytes] = []
    probe = tmp_path / "probe.ckpt"
    while len(out) < count:
        data = _mutate(rng, GOOD)
        probe.write_bytes(data)
        if check(probe) is not None:
            out.append(data)
    return out


def _experiment(tmp_path: Path) -> tuple[Path, list[str]]:
    from fractalgen.config import TrainConfig
    from versionkit.config import dump_config
    from versionkit.registry import Registry

    args = ["--experiment.output_root", str(tmp_path), "--experiment.name", "exp"]
    from fractalgen.config import parse_train_args

    config: TrainConfig = parse_train_args(args).config
    root = tmp_path / "exp"
    Registry(root).allocate()
    folder = root / "checkpoints" / "version_0"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(dump_config(config))
    return folder, args


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_resume_refuses_bad_and_hostile_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fractalgen.train import main
    from versionkit.registry import Registry

    folder, args = _experiment(tmp_path)
    marker = tmp_path / "PWNED"
    ckpt = folder / "last.ckpt"
    rng = random.Random(7)
    files = [b"this is text\n", bytes(rng.randrange(256) for _ in range(500))]
    files += _broken(rng, 6, tmp_path)
    files.append(pickle.dumps(_Evil(marker)))  # the raw malicious pickle of the issue
    capsys.readouterr()
    for data in files:
        ckpt.write_bytes(data)
        assert main(["--resume", str(ckpt), *args]) == 2
        line = _one_error_line(capsys.readouterr().err)
        assert line.startswith(f"error: --resume {ckpt}: ")
        assert "mmap" not in line
    assert "refusing to load it" in line and "arbitrary unpickling" in line
    assert not marker.exists(), "the malicious payload ran"
    assert [v.version for v in Registry(tmp_path / "exp").list()] == [0]  # nothing allocated


def test_inference_refuses_bad_and_hostile_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fractalgen import sample

    marker = tmp_path / "PWNED"
    ckpt = tmp_path / "x.ckpt"
    rng = random.Random(11)
    files = [b"this is text\n", bytes(rng.randrange(256) for _ in range(500))]
    files += _broken(rng, 6, tmp_path)
    files.append(pickle.dumps(_Evil(marker)))
    capsys.readouterr()
    for data in files:
        ckpt.write_bytes(data)
        rc = sample.main(["--checkpoint", str(ckpt), "--output_dir", str(tmp_path / "o")])
        assert rc != 0
        _one_error_line(capsys.readouterr().err)
    assert not marker.exists(), "the malicious payload ran"
