"""The table a sweep ends with: its trials ranked, best first."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from versionkit.sweep.study import ATTR_ERROR, ATTR_STATUS, ATTR_VERSION, Sweep

if TYPE_CHECKING:
    import optuna

__all__ = ["format_summary", "summary_rows"]


def summary_rows(sweep: Sweep, study: optuna.Study) -> list[dict[str, Any]]:
    """The trials ranked: completed by value, then pruned, then the rest by number."""
    from optuna.trial import TrialState

    sign = 1.0 if sweep.direction == "minimize" else -1.0
    rows: list[tuple[tuple[int, float, int], dict[str, Any]]] = []
    for t in study.get_trials(deepcopy=False):
        status = t.user_attrs.get(ATTR_STATUS)
        if t.state == TrialState.COMPLETE:
            status, best = "completed", t.value
        elif t.state == TrialState.PRUNED:
            status = "pruned"
            seen = list(t.intermediate_values.values())
            best = (min if sign > 0 else max)(seen) if seen else None
        elif t.state == TrialState.FAIL:
            status, best = (status if status not in (None, "running") else "dead"), None
        else:
            status, best = t.state.name.lower(), None
        group = {"completed": 0, "pruned": 1}.get(str(status), 2)
        key = (group, sign * best if best is not None else math.inf, t.number)
        rows.append((key, {
            "trial": t.number,
            "version": t.user_attrs.get(ATTR_VERSION),
            "params": sweep.space.decode(t.params),
            "best": best,
            "status": status,
            "error": t.user_attrs.get(ATTR_ERROR),
        }))
    return [row for _, row in sorted(rows, key=lambda r: r[0])]


def format_summary(sweep: Sweep, rows: Sequence[Mapping[str, Any]]) -> str:
    """The summary table: trial, version, each sampled field, best metric, status."""
    head = ["trial", "version", *sweep.space.fields, f"best {sweep.metric}", "status"]
    body = []
    for row in rows:
        params = row["params"]
        best = row["best"]
        body.append([
            str(row["trial"]),
            "-" if row["version"] is None else str(row["version"]),
            *(_short(params.get(f)) for f in sweep.space.fields),
            "-" if best is None else f"{best:.4f}",
            str(row["status"]),
        ])
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in [head, *body]]
    return "\n".join(lines)


def _short(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_short(v) for v in value) + "]"
    return str(value)
