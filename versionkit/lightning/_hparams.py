"""TensorBoard HParams sessions: one per version, so the HParams tab compares versions.

TensorBoard keeps only the first ``_hparams_/session_start_info`` and
``_hparams_/session_end_info`` it reads in a run folder, so a status that changes (a
failed version resumed to completion) cannot be appended. The session therefore lives
in one small event file of its own, named to sort before TensorBoard's timestamped ones
and replaced atomically when the status changes. The metrics (best and final value of
the monitored one) are ordinary scalars, appended as they arrive, of which the HParams
tab shows the latest.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from versionkit._atomic import write_atomic

__all__ = ["SESSION_FILE", "flatten", "write_session"]

#: Sorts before ``events.out.tfevents.<unix time>...``: TensorBoard keeps the first.
SESSION_FILE = "events.out.tfevents.0000000000.versionkit-hparams"

# TensorBoard's statuses are success, failure, running and unknown; ours are finer, and the
# exact one is an hparam ("status") too.
_STATUS = {"running": 3, "completed": 1, "failed": 2, "interrupted": 0, "pruned": 0}


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, float | str | bool]:
    """Dotted leaves (``optim.lr``) as values TensorBoard shows: numbers, strings, bools.

    Lists and ``None`` become their JSON text (``[64, 32]``, ``null``). The configs'
    ``schema_version`` bookkeeping is left out: it compares nothing.
    """
    out: dict[str, float | str | bool] = {}
    for key, value in config.items():
        if key == "schema_version":
            continue
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, bool | str):
            out[name] = value
        elif isinstance(value, int | float):
            out[name] = float(value)
        else:
            out[name] = json.dumps(value, sort_keys=True, default=str)
    return out


def write_session(
    log_dir: Path,
    hparams: Mapping[str, float | str | bool],
    *,
    status: str,
    start_time: float,
) -> None:
    """Write (replace) the version's HParams session file in ``log_dir``."""
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    start = plugin_data_pb2.SessionStartInfo(start_time_secs=start_time)
    for name, value in {**hparams, "status": status}.items():
        entry: Any = start.hparams[name]  # a google.protobuf Value
        if isinstance(value, bool):
            entry.bool_value = value
        elif isinstance(value, float):
            entry.number_value = value
        else:
            entry.string_value = value
    datas = [plugin_data_pb2.HParamsPluginData(session_start_info=start)]
    tags = [metadata.SESSION_START_INFO_TAG]
    if status != "running":
        end = plugin_data_pb2.SessionEndInfo(
            status=_STATUS.get(status, 0), end_time_secs=time.time()
        )
        datas.append(plugin_data_pb2.HParamsPluginData(session_end_info=end))
        tags.append(metadata.SESSION_END_INFO_TAG)
    chunks: list[bytes] = []

    class _Sink:
        def write(self, data: bytes) -> None:
            chunks.append(data)

    records = RecordWriter(_Sink())
    now = time.time()
    records.write(event_pb2.Event(wall_time=now, file_version="brain.Event:2").SerializeToString())
    for tag, data in zip(tags, datas, strict=True):
        value = summary_pb2.Summary.Value(tag=tag, metadata=metadata.create_summary_metadata(data))
        event = event_pb2.Event(wall_time=now, step=0, summary=summary_pb2.Summary(value=[value]))
        records.write(event.SerializeToString())
    log_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(log_dir / SESSION_FILE, b"".join(chunks), sync=False)
