"""torchrun for the tests' own harnesses (train_in_turn.py, step_harness.py): torch's own
`torch.distributed.run` (its parser, its elastic agent, its c10d rendezvous, the ranks' gloo
process group), with its `--start-method fork --run-path` options, in a process that has
imported what a rank of the engine imports first.

    python tests/torchrun_forked.py TORCHRUN_ARGS... SCRIPT ARGS...

A rank started by torchrun as a new interpreter spends ~4.4 s of CPU importing torch,
transformers, datasets and accelerate before its first step, and the agent another ~1.8 s
importing torch (benchmarks/NOTES.md §6d). Forked from this process, the agent and every rank
share one import: a 2-rank harness launch costs one import instead of three. The script runs
in the forked rank as `__main__` (runpy), as torchrun's `--run-path` runs it.

Only the harnesses are started this way. Every launch of the product (`launcher run`,
`resume`, `bench`, Slurm) is torchrun as a user's cluster runs it, a new interpreter a rank.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# What train_in_turn.py and step_harness.py import, and the model code of BERT (the bulk of
# transformers' model code: modeling_utils and what it imports). Nothing here runs a torch op:
# a rank forked after one could inherit an OpenMP pool it cannot use.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
import datasets  # noqa: E402,F401
import torch.distributed.run  # noqa: E402
import transformers.models.bert.modeling_bert  # noqa: E402,F401
from accelerate.state import AcceleratorState  # noqa: E402,F401
from transformers.integrations.deepspeed import unset_hf_deepspeed_config  # noqa: E402,F401

import launcher.engine.main  # noqa: E402,F401
import launcher.engine.trainer  # noqa: E402,F401

if __name__ == "__main__":
    # The harnesses import their neighbours (tests/) as a script run by path would.
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    torch.distributed.run.main(["--start-method", "fork", "--run-path", *sys.argv[1:]])
