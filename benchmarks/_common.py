"""What every benchmark script shares: the machine line and the one-JSON-line-per-figure output."""

from __future__ import annotations

import json
import os
import platform
from typing import Any


def machine(extra: str = "") -> str:
    """CPU model, core count, Python, OS and the load average when the benchmark started."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    text = (
        f"{cpu}, {os.cpu_count()} cpus, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}, load {load:.1f} at start"
    )
    return f"{text}, {extra}" if extra else text


def emit(
    bench: str,
    figure: str,
    value: float | int,
    unit: str,
    target: str | None,
    machine: str,
    digits: int = 4,
    **extra: Any,
) -> None:
    """Print one figure as one JSON line (floats rounded to ``digits`` decimals)."""
    row = {
        "bench": bench,
        "figure": figure,
        "value": round(value, digits) if isinstance(value, float) else value,
        "unit": unit,
        "target": target,
        "machine": machine,
        **extra,
    }
    print(json.dumps(row), flush=True)
