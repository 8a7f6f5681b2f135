"""Checkpoints: everything a run needs to go on, written by every rank, published at once.

Layout of `checkpoints/step-N/`:
  dcp/                 model and optimizer tensors, torch.distributed.checkpoint (sharded as
                       the strategy shards them; DCP reshards on load, so the world size can
                       change between save and resume)
  optim_groups.json    the optimizer's non-tensor entries (learning rates, betas, ...)
  rng/rank{R}.safetensors   each rank's torch (CPU and CUDA), numpy and Python RNG states
  deepspeed/           ZeRO strategies: the engine's own checkpoint instead of dcp/
  trainer_state.json   step, data position, scheduler, grad scaler, best eval, recipe print:
                       engine/train_state.py's TrainState
  manifest.json        size and sha256 of every file above, written last

Ranks write into `step-N.tmp/`; each rank hashes exactly the files it wrote itself (no rank
lists a directory: on NFS or Lustre another node's listing can be stale) and sends the entries
to rank 0, which writes the manifest from them, renames the directory and then replaces LATEST
atomically.

Modules: `store` (no torch: manifests, LATEST and BEST, the newest intact checkpoint, atomic
writes), `trust` (no torch: what in a checkpoint could run code when loaded), `compat` (whether
a checkpoint can go on under a recipe), `sharded` (DCP and DeepSpeed save and load), `rng`.
"""
