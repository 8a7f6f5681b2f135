"""Each rank's random number generators (torch CPU and CUDA, numpy, Python), saved in a
checkpoint as safetensors with JSON metadata: nothing in them is unpickled when loaded."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file


def save(path: Path) -> None:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    tensors = {"torch": torch.get_rng_state(),
               "numpy": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
               "python": torch.tensor(py_state, dtype=torch.int64)}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{i}"] = s
    meta = {"numpy": json.dumps([kind, pos, has_gauss, gauss]),
            "python": json.dumps([version, py_gauss])}
    save_file(tensors, str(path), metadata=meta)


def load(path: Path) -> None:
    from safetensors import safe_open

    tensors = load_file(str(path))
    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata()
    torch.set_rng_state(tensors["torch"])
    kind, pos, has_gauss, gauss = json.loads(meta["numpy"])
    np.random.set_state((kind, tensors["numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, py_gauss = json.loads(meta["python"])
    random.setstate((version, tuple(tensors["python"].tolist()), py_gauss))
    cuda = [tensors[f"cuda{i}"] for i in range(torch.cuda.device_count()) if f"cuda{i}" in tensors]
    if cuda:
        torch.cuda.set_rng_state_all(cuda)
