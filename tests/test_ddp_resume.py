"""DDP on CPU (2 processes, gloo): a resumed run is bitwise the uninterrupted one, and
the ranks split the validation set."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from test_train_helpers import run_ddp_main, state_of, write_tiny

from versionkit.registry import Registry


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
def test_ddp_resume_is_bitwise_the_uninterrupted_run_and_ranks_split_validation(
    tmp_path: Path,
) -> None:
    cfg = str(write_tiny(tmp_path))
    # Uninterrupted: 4 steps, validation (every image: limit 1.0) and checkpoints at 2 and 4.
    run_ddp_main(tmp_path, "--config", cfg, "--limit_val_batches", "1.0")
    root = tmp_path / "outputs" / "tiny"
    reg = Registry(root)
    ck = reg.checkpoint_dir(0)
    final = state_of(ck / "last.ckpt")
    val_loss = reg.get(0).metrics["val_loss"]
    step2 = next(ck.glob("step_00000002-*.ckpt"))
    blob = torch.load(step2, map_location="cpu", weights_only=True)
    rng = blob["fractalgen_rng"]
    # Every rank's own state travels with the checkpoint (rank 0 writes it).
    assert rng["world_size"] == 2 and len(rng["cpu"]) == 2
    assert not torch.equal(rng["cpu"][0], rng["cpu"][1])

    # Each rank validated its own share: 180 validation digits, 90 per rank, in batches
    # of 32, so 3 batches per validation (6 if each rank evaluated all of them).
    val_progress = blob["loops"]["fit_loop"]["epoch_loop.val_loop.batch_progress"]
    assert val_progress["current"]["completed"] == math.ceil(90 / 32)

    # As after a crash right after step 2: continue from that checkpoint.
    (ck / "last.ckpt").unlink()
    next(ck.glob("step_00000004-*.ckpt")).unlink()
    run_ddp_main(tmp_path, "--resume", str(step2))
    assert [v.version for v in reg.list()] == [0]
    resumed = state_of(ck / "last.ckpt")
    assert resumed.keys() == final.keys()
    for key in final:
        assert torch.equal(final[key], resumed[key]), key
    assert reg.get(0).metrics["val_loss"] == val_loss

    # The reported val_loss (mean over both ranks' shares) is an estimate of the same
    # figure one process measures over the whole set: within the estimator's noise.
    from fractalgen.metrics import nll_draws
    from fractalgen.sample import load_checkpoint

    loaded = load_checkpoint(ck / "last.ckpt")
    from fractalgen.data import build_datasets

    _, val_set, _ = build_datasets(loaded.config.data, 8, seed=0)
    images = torch.stack([val_set[i][0] for i in range(len(val_set))])  # type: ignore[arg-type]
    draws = torch.tensor(nll_draws(loaded.model, images, draws=6, seed=1))
    assert abs(val_loss - float(draws.mean())) <= 4 * float(draws.std()) + 1e-3
