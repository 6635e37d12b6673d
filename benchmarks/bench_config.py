"""Benchmark of versionkit.config on fractalgen's TrainConfig.

Prints one JSON object per line and figure::

    python benchmarks/bench_config.py            # full run (about half a minute)
    python benchmarks/bench_config.py --quick    # fewer repetitions

Figures: the median time to load + validate the TrainConfig from a YAML file with 10 flag
overrides (target <= 2 ms), the median canonical dump and hash times, and the median
time of ``import versionkit`` in a fresh process (target <= 150 ms, and torch must not be
imported). When OmegaConf and jsonargparse are installed, the same load (same YAML, the
same 10 overrides, a structured schema of the same fields) is timed with them and the
ratios are printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Optional, Union, get_args, get_origin

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _common import emit as common_emit  # noqa: E402
from _common import machine  # noqa: E402
from pydantic import BaseModel  # noqa: E402

from fractalgen.config import TrainConfig, parse_train_args  # noqa: E402
from versionkit.config import config_hash, dump_config  # noqa: E402

FLAGS = [  # 10 overrides in the forms users type
    "--max_steps",
    "7",
    "--lr=3e-4",
    "--train_batch_size",
    "32",
    "--model.num_blocks_list",
    "2,1,1",
    "--no-guiding_pixel",
    "--experiment.name",
    "bench",
    "--sampling.cfg",
    "1.5",
    "--betas",
    "[0.9, 0.99]",
    "--warmup_steps=10",
    "--precision",
    "bf16-mixed",
]
DOTLIST = [  # the same overrides in OmegaConf's dotlist form
    "trainer.max_steps=7",
    "optim.lr=3e-4",
    "data.train_batch_size=32",
    "model.num_blocks_list=[2,1,1]",
    "model.guiding_pixel=false",
    "experiment.name=bench",
    "sampling.cfg=1.5",
    "optim.betas=[0.9,0.99]",
    "optim.warmup_steps=10",
    "trainer.precision=bf16-mixed",
]
JSONARG_FLAGS = [  # and in jsonargparse's (full dotted names)
    "--trainer.max_steps",
    "7",
    "--optim.lr",
    "3e-4",
    "--data.train_batch_size",
    "32",
    "--model.num_blocks_list",
    "[2,1,1]",
    "--model.guiding_pixel",
    "false",
    "--experiment.name",
    "bench",
    "--sampling.cfg",
    "1.5",
    "--optim.betas",
    "[0.9,0.99]",
    "--optim.warmup_steps",
    "10",
    "--trainer.precision",
    "bf16-mixed",
]


MACHINE = machine()


def emit(figure: str, value: float, unit: str, target: str = "") -> None:
    common_emit("config", figure, value, unit, target, MACHINE)


def median_ms(fn: Callable[[], object], repeat: int, rounds: int = 5) -> float:
    """Median over ``rounds`` of the mean per-call time of ``repeat`` calls."""
    fn()  # warm caches (schema index, regexes)
    results = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(repeat):
            fn()
        results.append((time.perf_counter() - start) / repeat * 1000)
    return statistics.median(results)


def import_ms(runs: int) -> tuple[float, float, list[str]]:
    code = (
        "import sys, time; t = time.perf_counter(); import versionkit; "
        "dt = (time.perf_counter() - t) * 1000; "
        "heavy = [m for m in ('torch', 'pytorch_lightning', 'pydantic') if m in sys.modules]; "
        "print(dt, ','.join(heavy))"
    )
    times, walls, heavy = [], [], set()
    for _ in range(runs):
        start = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.split()
        walls.append((time.perf_counter() - start) * 1000)
        times.append(float(out[0]))
        if len(out) > 1:
            heavy.update(out[1].split(","))
    return statistics.median(times), statistics.median(walls), sorted(heavy)


def dataclass_of(model: type[BaseModel]) -> type:
    """A dataclass with the same fields and defaults, for OmegaConf and jsonargparse."""

    def plain_type(tp: Any) -> Any:
        origin = get_origin(tp)
        args = get_args(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            return dataclass_of(tp)
        if origin in (Union, types.UnionType):
            rest = [a for a in args if a is not type(None)]
            inner = plain_type(rest[0]) if len(rest) == 1 else Any
            return Optional[inner] if type(None) in args else inner  # noqa: UP045
        if origin is Literal:
            return type(args[0])
        if origin in (list, tuple):
            return list[plain_type(args[0])]
        if isinstance(tp, type) and issubclass(tp, (Path, enum.Enum)):
            return str
        if get_origin(tp) is not None and str(origin).endswith("Annotated"):
            return plain_type(args[0])
        return tp

    fields = []
    for name, info in model.model_fields.items():
        tp = plain_type(info.annotation)
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            fields.append((name, tp, dataclasses.field(default_factory=tp)))
            continue
        default = info.get_default(call_default_factory=True)
        if isinstance(default, BaseModel):
            continue
        if isinstance(default, (list, tuple)):
            value = list(default)
            fields.append((name, tp, dataclasses.field(default_factory=lambda v=value: list(v))))
        else:
            fields.append((name, tp, str(default) if isinstance(default, Path) else default))
    return dataclasses.make_dataclass(f"{model.__name__}DC", fields)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    opts = parser.parse_args()
    repeat = 50 if opts.quick else 300
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.yaml"
        path.write_text(dump_config(TrainConfig(), header=["benchmark config"]))
        argv = ["--config", str(path), *FLAGS]
        config = parse_train_args(argv).config
        assert config.trainer.max_steps == 7 and config.optim.betas == (0.9, 0.99)

        ours = median_ms(lambda: parse_train_args(argv), repeat)
        emit("load_validate_10_flags_median_ms", ours, "ms", "<= 2")
        emit("dump_median_ms", median_ms(lambda: dump_config(config), repeat), "ms")
        emit("hash_median_ms", median_ms(lambda: config_hash(config), repeat), "ms")
        emit("flags_only_median_ms", median_ms(lambda: parse_train_args(FLAGS), repeat), "ms")

        imp, wall, heavy = import_ms(5 if opts.quick else 11)
        emit("import_versionkit_median_ms", imp, "ms", "<= 150")
        emit(
            "python_c_import_versionkit_process_median_ms",
            wall,
            "ms",
            "whole process incl. interpreter start-up",
        )
        got = f": got {','.join(heavy)}" if heavy else ""
        emit(
            "import_versionkit_heavy_modules",
            float(len(heavy)),
            "modules",
            f"0 (torch, lightning, pydantic not imported){got}",
        )

        try:
            from omegaconf import OmegaConf
        except ImportError:
            OmegaConf = None
        if OmegaConf is not None:
            schema = OmegaConf.structured(dataclass_of(TrainConfig))

            def omega() -> object:
                merged = OmegaConf.merge(
                    schema, OmegaConf.load(path), OmegaConf.from_dotlist(DOTLIST)
                )
                return OmegaConf.to_object(merged)

            result: Any = omega()
            assert result.trainer.max_steps == 7
            theirs = median_ms(omega, max(repeat // 10, 10))
            emit("omegaconf_load_10_overrides_median_ms", theirs, "ms")
            emit("omegaconf_vs_ours_ratio", theirs / ours, "x", "> 1 means versionkit is faster")

        try:
            from jsonargparse import ActionConfigFile, ArgumentParser
        except ImportError:
            ArgumentParser = None
        if ArgumentParser is not None:
            jparser = ArgumentParser(exit_on_error=False)
            jparser.add_argument("--config", action=ActionConfigFile)
            jparser.add_class_arguments(dataclass_of(TrainConfig))
            jargv = ["--config", str(path), *JSONARG_FLAGS]

            instantiate = getattr(jparser, "instantiate", None) or jparser.instantiate_classes

            def jsonarg() -> object:
                return instantiate(jparser.parse_args(jargv))

            parsed: Any = jsonarg()
            assert parsed.trainer.max_steps == 7
            theirs = median_ms(jsonarg, max(repeat // 30, 5))
            emit("jsonargparse_load_10_overrides_median_ms", theirs, "ms")
            emit("jsonargparse_vs_ours_ratio", theirs / ours, "x", "> 1 means versionkit is faster")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
