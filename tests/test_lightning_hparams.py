"""Every version is one TensorBoard HParams session, read back with TensorBoard's own reader."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lightning_support import FILTERS, loaders, new_run, resumed, toy_class, trainer_kwargs
from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer
from tensorboard.plugins.hparams import api_pb2, metadata
from tensorboard.util import tensor_util

from versionkit.lightning import build_trainer, fit

pytestmark = [pytest.mark.filterwarnings(f) for f in FILTERS]


def _sessions(logs: Path) -> dict[str, dict[str, Any]]:
    """Per run (version folder): hparams, TensorBoard status, last metric values."""
    mux = EventMultiplexer()
    mux.AddRunsFromDirectory(str(logs))
    mux.Reload()
    out: dict[str, dict[str, Any]] = {}
    for run, tags in mux.PluginRunToTagToContent(metadata.PLUGIN_NAME).items():
        start = metadata.parse_session_start_info_plugin_data(
            tags[metadata.SESSION_START_INFO_TAG]
        )
        hparams: dict[str, Any] = {}
        for name, value in start.hparams.items():
            kind = value.WhichOneof("kind")
            hparams[name] = getattr(value, kind)
        end = tags.get(metadata.SESSION_END_INFO_TAG)
        status = metadata.parse_session_end_info_plugin_data(end).status if end else None
        scalars = {}
        for tag in mux.GetAccumulator(run).Tags()["tensors"]:
            if tag.startswith("_hparams_/"):
                continue
            last = max(mux.Tensors(run, tag), key=lambda e: (e.step, e.wall_time))
            scalars[tag] = float(tensor_util.make_ndarray(last.tensor_proto).item())
        out[run] = {"hparams": hparams, "status": status, "scalars": scalars}
    return out


def test_each_version_is_a_session_with_config_status_and_best_final(tmp_path: Path) -> None:
    Toy = toy_class("lightning")
    vals = {2: 3.0, 4: 1.0, 6: 2.0}
    run = new_run(tmp_path / "exp")
    trainer = build_trainer(run, lightning="lightning", **trainer_kwargs(max_steps=6))
    with pytest.raises(KeyboardInterrupt):
        fit(run, trainer, Toy(val_by_step=vals, interrupt_at=5), *loaders())
    first = _sessions(tmp_path / "exp/logs")["version_0"]
    assert first["hparams"]["status"] == "interrupted"
    assert first["status"] == api_pb2.STATUS_UNKNOWN

    again = resumed(run, run.checkpoint_dir / "last.ckpt")
    trainer = build_trainer(again, lightning="lightning", **trainer_kwargs(max_steps=6))
    assert fit(again, trainer, Toy(val_by_step=vals), *loaders()) == "completed"
    other = new_run(tmp_path / "exp")
    trainer = build_trainer(other, lightning="lightning", **trainer_kwargs(max_steps=2))
    with pytest.raises(RuntimeError):
        fit(other, trainer, Toy(fail_at=1), *loaders())

    sessions = _sessions(tmp_path / "exp/logs")
    assert sorted(sessions) == ["version_0", "version_1"]
    done = sessions["version_0"]
    assert done["hparams"] == {
        "optim.lr": pytest.approx(0.05),
        "model.width": 4.0,
        "model.dims": "[8, 4]",
        "status": "completed",
    }
    assert done["status"] == api_pb2.STATUS_SUCCESS
    # best over the whole version (1.0 at step 4, before the interrupt); final: step 6
    assert done["scalars"]["val_loss_best"] == 1.0
    assert done["scalars"]["val_loss_final"] == 2.0
    failed = sessions["version_1"]
    assert failed["hparams"]["status"] == "failed"
    assert failed["status"] == api_pb2.STATUS_FAILURE
