"""Where a FractalGen training step's time goes: forward and backward per level and per
attention / feed-forward module, from one ``torch.profiler`` run (used by
``bench_model.py --profile``).

Forward time is the inclusive CPU time of a ``record_function`` range opened around each
labelled module's forward. Backward time is that of the autograd nodes whose forward op
ran inside the range (matched by the profiler's sequence numbers), so a module's backward
is charged to it even though autograd runs it later. Everything else in the step (the
optimizer, gradient clipping, unlabelled glue) is the rest.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

from fractalgen.model import FractalGen
from fractalgen.model.blocks import Attention, LlamaBlock, Mlp, SwiGLU

_INNER = (Attention, Mlp, SwiGLU, LlamaBlock)


def _regions(model: FractalGen) -> list[tuple[str, str, nn.Module]]:
    """(label, module path, module) of each level, the pixel head, and their attention /
    feed-forward modules; a level's path is its label, a module's is below it."""
    out: list[tuple[str, str, nn.Module]] = []
    tops = [(f"level{i}", lv) for i, lv in enumerate(model.levels)]
    for name, top in [*tops, ("pixel head", model.pixel_head)]:
        out.append((name, name, top))
        for sub_name, sub in top.named_modules():
            if isinstance(sub, _INNER) and sub is not top:
                kind = type(sub).__name__.lower()
                out.append((f"{name} / {sub_name} ({kind})", f"{name}.{sub_name}", sub))
    return out


def _hook(module: nn.Module, label: str) -> list[Any]:
    open_ranges: list[Any] = []

    def pre(_m: nn.Module, _a: Any) -> None:
        rf = record_function(label)
        rf.__enter__()
        open_ranges.append(rf)

    def post(_m: nn.Module, _a: Any, _o: Any) -> None:
        open_ranges.pop().__exit__(None, None, None)

    return [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]


def profile_levels(model: FractalGen, train_step: Callable[[], None], steps: int) -> None:
    """Print the per-level forward / backward breakdown of ``steps`` train steps to stderr."""
    regions = _regions(model)
    labels = {label for label, _, _ in regions}
    handles = [h for label, _, module in regions for h in _hook(module, label)]
    try:
        train_step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                train_step()
    finally:
        for h in handles:
            h.remove()
    events = list(prof.events())
    spans = sorted(
        (e.time_range.start, e.time_range.end, e.name) for e in events if e.name in labels
    )
    fwd: dict[str, float] = defaultdict(float)
    for e in events:
        if e.name in labels:
            fwd[e.name] += e.cpu_time_total
    owner: dict[int, str] = {}
    for e in events:
        if e.sequence_nr < 0 or not e.name.startswith("aten::") or e.sequence_nr in owner:
            continue
        start, end = e.time_range.start, e.time_range.end
        inside = [s for s in spans if s[0] <= start and end <= s[1]]
        if inside:
            owner[e.sequence_nr] = min(inside, key=lambda s: s[1] - s[0])[2]
    bwd: dict[str, float] = defaultdict(float)
    for e in events:
        if e.name.startswith("autograd::engine::evaluate_function"):
            bwd[owner.get(e.sequence_nr, "rest")] += e.cpu_time_total
    total = sum(e.cpu_time_total for e in events if e.cpu_parent is None)
    ms = 1e-3 / steps
    print(f"--- per level, ms per train step (x{steps}): forward, backward", file=sys.stderr)
    paths = {label: path for label, path, _ in regions}
    top_fwd = top_bwd = 0.0
    for label, path, _ in regions:
        # Inclusive, as the forward range is: the backward of the modules inside it too.
        inner = [k for k, p in paths.items() if p == path or p.startswith(path + ".")]
        back = sum(bwd.get(k, 0.0) for k in inner)
        if label == path:
            top_fwd, top_bwd = top_fwd + fwd[label], top_bwd + back
        elif fwd[label] == 0.0:
            continue  # run outside its forward (a MAR level's last block): in its level
        pad = "" if label == path else "    "
        print(f"{pad}{label:<44} {fwd[label] * ms:8.2f} {back * ms:8.2f}", file=sys.stderr)
    rest = total - top_fwd - top_bwd
    print(f"{'rest (optimizer, clipping, glue)':<44} {rest * ms:8.2f}", file=sys.stderr)
    print(f"{'step':<44} {total * ms:8.2f}", file=sys.stderr)
