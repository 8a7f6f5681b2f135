"""FSDP on 3 ranks: the checkpoint holds a shard of every weight per rank, its manifest is what
each rank wrote, and the weights read back whole from the shards are the run's export.

3 ranks, not 2: rows split unevenly (a 3rd of 128 is not whole), and a manifest built from
what each rank wrote can no longer pass by rank 0 and "the other one". Accumulation 2, so
FSDP2's gradient sync is switched off for the first micro batch of each step (accelerate's
no_sync: set_requires_gradient_sync) and on for the second.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from conftest import TINY, launcher
from manifest_check import assert_manifest_is_what_each_rank_wrote
from test_strategies import assert_sharded_by_fsdp
from launcher.checkpoint.sharded import model_weights
from launcher.plan.build import Plan
from launcher.run_dir import RunDir


def test_fsdp_checkpoint_at_3_ranks_is_what_each_rank_wrote(tmp_path: Path):
    out = tmp_path / "run"
    proc = launcher("run", TINY, "--nproc-per-node", "3", "scale.strategy=fsdp",
                    "scale.micro_batch=8", "scale.global_batch=48", "run.max_steps=2",
                    "run.epochs=None", "data.eval=none",
                    "checkpoint.every=0", f"run.output_dir={out}", timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rd = RunDir(out)
    assert Plan.from_json((rd.plan / "plan.json").read_text()).grad_accum == 2
    ckpt = rd.latest()
    assert ckpt == rd.checkpoint(2)
    assert_manifest_is_what_each_rank_wrote(ckpt, world=3, strategy="fsdp")
    assert_sharded_by_fsdp(ckpt, world=3)
    # The shards read back whole in one process (what `launcher eval --checkpoint` does)
    # are the weights the export gathered from the 3 ranks.
    whole, export = model_weights(ckpt), load_file(str(rd.final / "model.safetensors"))
    assert set(export) <= set(whole)
    for key, tensor in export.items():
        assert torch.equal(whole[key], tensor), key
