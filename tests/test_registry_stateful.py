"""Hypothesis state machine: random interleavings of registry operations vs a simple model.

The model is what a user expects: numbers go up by one from the highest number ever
handed out, stepping over folders another tool made there (a new registry starts above
every folder), deleting folders never brings a number back, metrics merge, and
``best`` is the lowest ``val_loss`` among recorded checkpoints whose files still exist
(recorded value first, else the one in the file name; ties to the later step).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

from versionkit.registry import STATUSES, Registry


class RegistryMachine(RuleBasedStateMachine):
    versions = Bundle("versions")

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="vk-stateful-"))
        self.reg = Registry(self.tmp / "exp", "file")
        self.next = 0
        self.allocated: set[int] = set()
        self.foreign: set[int] = set()  # version_N folders made by another tool
        self.metrics: dict[int, dict[str, float]] = {}
        self.status: dict[int, str] = {}
        # version -> checkpoint files that exist
        self.ckpts: dict[int, set[str]] = {}
        # version -> file name -> (step, val_loss) recorded (kept when the file goes)
        self.recorded: dict[int, dict[str, tuple[int, float]]] = {}
        # version -> which of its folders exist ("checkpoints", "logs"): the floor comes
        # from this model, never from the registry's own folder scan.
        self.folders: dict[int, set[str]] = {}

    def teardown(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _folder_numbers(self) -> set[int]:
        return {n for n, kinds in self.folders.items() if kinds}

    @rule(target=versions)
    def allocate(self) -> int:
        if self.next == 0:  # a new registry lists the folders once
            expected = max(self._folder_numbers(), default=-1) + 1
        else:  # then it only steps over folders at and above its counter
            expected = self.next
            while expected in self._folder_numbers():
                expected += 1
        info = self.reg.allocate(config={"n": len(self.allocated)})
        assert info.version == expected
        assert info.checkpoint_dir.is_dir() and info.log_dir.is_dir()
        self.next = info.version + 1
        self.allocated.add(info.version)
        self.foreign.discard(info.version)
        self.metrics[info.version] = {}
        self.status[info.version] = "running"
        self.ckpts[info.version] = set()
        self.recorded[info.version] = {}
        self.folders[info.version] = {"checkpoints", "logs"}
        return info.version

    @rule(n=versions, which=st.sampled_from(["checkpoints", "logs", "both"]))
    def delete_folders(self, n: int, which: str) -> None:
        if which in ("checkpoints", "both"):
            shutil.rmtree(self.reg.checkpoint_dir(n), ignore_errors=True)
            self.ckpts[n] = set()
            self.folders[n].discard("checkpoints")
        if which in ("logs", "both"):
            shutil.rmtree(self.reg.log_dir(n), ignore_errors=True)
            self.folders[n].discard("logs")

    @rule(k=st.integers(0, 80), create=st.booleans())
    def foreign_folder(self, k: int, create: bool) -> None:
        if k in self.allocated:
            return
        folder = self.reg.root / "logs" / f"version_{k}"
        if create:
            folder.mkdir(parents=True, exist_ok=True)
            self.foreign.add(k)
            self.folders.setdefault(k, set()).add("logs")
        else:
            shutil.rmtree(folder, ignore_errors=True)
            self.foreign.discard(k)
            self.folders.get(k, set()).discard("logs")

    @rule(k=st.integers(0, 200), kind=st.sampled_from(["checkpoints", "logs"]),
          name=st.sampled_from(["version_{k}_old", "version_abc", "old_version_{k}", "v{k}"]))
    def odd_folder(self, k: int, kind: str, name: str) -> None:
        # Names that only look like versions never move the next number (not in the model).
        (self.reg.root / kind / name.format(k=k)).mkdir(parents=True, exist_ok=True)

    @rule(
        n=versions,
        key=st.sampled_from(["train_loss", "val_loss", "lr"]),
        value=st.floats(-10, 10, allow_nan=False),
        step=st.integers(0, 100),
    )
    def log_metric(self, n: int, key: str, value: float, step: int) -> None:
        self.reg.log_metrics(n, {key: value}, step=step)
        self.metrics[n][key] = value

    @rule(n=versions, status=st.sampled_from(STATUSES))
    def set_status(self, n: int, status: str) -> None:
        self.reg.set_status(n, status)
        self.status[n] = status

    # Few distinct values so that ties (broken by the later step) are common.
    @rule(
        n=versions,
        step=st.integers(0, 20),
        value=st.integers(0, 8).map(lambda i: i / 3),
        record=st.booleans(),
    )
    def add_checkpoint(self, n: int, step: int, value: float, record: bool) -> None:
        name = f"step_{step:08d}-val_loss_{value:.4f}.ckpt"
        path = self.reg.checkpoint_dir(n) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        self.folders[n].add("checkpoints")
        path.write_bytes(b"ckpt")
        if record:
            self.reg.add_checkpoint(n, path, step=step, metrics={"val_loss": value})
            self.recorded[n][name] = (step, value)
        self.ckpts[n].add(name)

    def _view(self, n: int, name: str) -> tuple[int, float]:
        if name in self.recorded[n]:
            return self.recorded[n][name]
        return int(name[5:13]), float(name[23:29])

    @rule(n=versions, data=st.data())
    def delete_checkpoint(self, n: int, data: st.DataObject) -> None:
        if not self.ckpts[n]:
            return
        name = data.draw(st.sampled_from(sorted(self.ckpts[n])))
        (self.reg.checkpoint_dir(n) / name).unlink()
        self.ckpts[n].discard(name)

    @invariant()
    def listing_matches_model(self) -> None:
        listed = {v.version: v for v in self.reg.list()}
        assert set(listed) == self.allocated | (self.foreign & self._folder_numbers())
        for n in self.allocated:
            assert listed[n].metrics == self.metrics[n]
            assert listed[n].status == self.status[n]
        for n in self.foreign:
            assert listed[n].status == "untracked"
        latest = self.reg.latest()
        assert (latest.version if latest else None) == (max(listed) if listed else None)

    @invariant()
    def checkpoints_and_best_match_model(self) -> None:
        candidates = []
        for n, files in self.ckpts.items():
            found = {
                c.path.name: (c.step, c.metrics.get("val_loss")) for c in self.reg.checkpoints(n)
            }
            assert found == {name: self._view(n, name) for name in files}
            if self.status.get(n) == "pruned":
                continue  # best leaves pruned versions out unless asked
            for name in files & set(self.recorded[n]):
                step, value = self._view(n, name)
                candidates.append((value, -step, -n, name))
        best = self.reg.best("val_loss", "min")
        if not candidates:
            assert best is None
        else:
            value, neg_step, neg_n, name = min(candidates)
            assert best is not None
            assert (best.version, best.step, best.path.name) == (-neg_n, -neg_step, name)
            assert best.metrics["val_loss"] == value


RegistryMachine.TestCase.settings = settings(max_examples=20, stateful_step_count=25, deadline=None)
TestRegistryStateMachine = pytest.mark.slow(RegistryMachine.TestCase)
