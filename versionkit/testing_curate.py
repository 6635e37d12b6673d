"""Contract tests of the curation verbs' backend behaviour: a pytest mixin for any backend.

Tags live in the backend's experiment metadata, gc and import change version records:
these tests check, through a :class:`~versionkit.registry.Registry` on the backend, that
a tag names one version at a time (also when processes move it at once), that the
registry forgets the checkpoints gc removed, and that an import allocates through the
target backend and records where the version came from. Compose it next to the
``backend`` fixture of :mod:`versionkit.testing`::

    from versionkit.testing import BackendContractSuite
    from versionkit.testing_curate import CurateContract

    class TestMyBackend(BackendContractSuite, CurateContract):
        shares_across_processes = True
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest

from versionkit.backends.base import Backend
from versionkit.curate import gc, refs
from versionkit.curate.archive import export_version, import_version
from versionkit.errors import VersionNotFoundError
from versionkit.registry import Registry
from versionkit.testing import BackendFactory, ContractBase, run_in_processes

__all__ = ["CurateContract"]


def _registry(b: Backend) -> Registry:
    return Registry(Path(b.root), b)


def _finished(reg: Registry, losses: list[float]) -> int:
    n = reg.allocate(config={"lr": 0.1}).version
    for step, loss in enumerate(losses, 1):
        path = reg.checkpoint_dir(n) / f"step_{step:08d}-val_loss_{loss:.4f}.ckpt"
        path.write_bytes(b"c" * 8)
        reg.add_checkpoint(n, path, step=step, metrics={"val_loss": loss})
    reg.set_status(n, "completed")
    return n


def _move_in_child(spec: tuple[type[Backend], str, Any, str], version: int, rounds: int,
                   start: Any, out: Any) -> None:
    cls, uri, root, experiment = spec
    try:
        reg = Registry(Path(root), cls(uri, root, experiment))
        start.wait(30)
        for i in range(rounds):
            refs.set_tag(reg, "prod", version)
            refs.set_tag(reg, f"own-{version}-{i}", version)
        reg.close()
        out.put(("ok", version))
    except BaseException as exc:  # reported to the parent, which fails the test
        out.put(("error", repr(exc)))
    finally:
        sys.stdout.flush()


class CurateContract(ContractBase):
    """Tags, gc's record updates and imports, on one backend."""

    tag_processes: ClassVar[int] = 4
    tag_rounds: ClassVar[int] = 5

    def test_a_tag_names_one_version_at_a_time(self, backend: BackendFactory) -> None:
        reg = _registry(backend())
        for _ in range(3):
            reg.allocate()
        assert refs.set_tag(reg, "prod", 0) is None
        assert refs.set_tag(reg, "prod", 2) == 0
        refs.set_tag(reg, "old", 0)
        again = _registry(backend())  # another handle on the same store sees it
        assert refs.tags(again) == {"old": 0, "prod": 2}
        assert refs.tags_by_version(again) == {0: ["old"], 2: ["prod"]}
        assert refs.resolve_version(again, "prod") == 2
        assert refs.remove_tag(again, "prod") == 2
        with pytest.raises(VersionNotFoundError, match="tags: old"):
            refs.resolve_version(reg, "prod")
        with pytest.raises(VersionNotFoundError):
            refs.set_tag(reg, "new", 9)
        assert refs.tags(reg) == {"old": 0}

    def test_gc_makes_the_registry_forget_removed_files(self, backend: BackendFactory) -> None:
        reg = _registry(backend())
        n = _finished(reg, [0.5, 0.2, 0.9])
        other = _finished(reg, [0.1])
        done = gc.apply(reg, gc.plan(reg, keep_best=0, keep_last=0))
        assert {r.version for r in done.checkpoints} == {n}
        assert reg.get(n).record["checkpoints"] == []
        assert reg.best(version=n) is None
        best = reg.best()
        assert best is not None and best.version == other and best.path.is_file()

    def test_import_allocates_through_the_target_backend(
        self, backend: BackendFactory, tmp_path: Path
    ) -> None:
        src = _registry(backend("source"))
        n = _finished(src, [0.4, 0.3])
        archive = tmp_path / "v.tar.gz"
        export_version(src, n, archive)
        dest = _registry(backend("target"))
        dest.allocate()
        result = import_version(archive, dest)
        assert result.version == 1
        info = dest.get(1)
        assert info.status == "completed" and info.record["imported_from"]["version"] == n
        assert [c["path"] for c in info.record["checkpoints"]] == [
            "checkpoints/version_1/step_00000002-val_loss_0.3000.ckpt"]
        assert dest.allocate().version == 2

    def test_concurrent_tag_moves_leave_one_holder(self, backend: BackendFactory) -> None:
        if not self.shares_across_processes:
            pytest.skip("this backend's store is local to one process")
        b = backend()
        reg = _registry(b)
        for _ in range(self.tag_processes):
            reg.allocate()
        spec = (type(b), b.uri, b.root, b.experiment)
        run_in_processes(
            _move_in_child, [(spec, n, self.tag_rounds) for n in range(self.tag_processes)]
        )
        tags = refs.tags(reg)
        assert tags.pop("prod") in range(self.tag_processes)
        assert tags == {f"own-{n}-{i}": n for n in range(self.tag_processes)
                        for i in range(self.tag_rounds)}, "a concurrent tag move was lost"
