"""Packed micro batches: several examples per row, each attending only to itself.

At AG-News lengths (about 50 tokens) a micro batch padded to its longest row is mostly
padding, and attention is under 1% of BERT-large's FLOPs: what costs is running the matrix
products over pad tokens. Packing puts a micro batch's examples into as few rows of
`data.max_length` tokens as first-fit-decreasing allows, with
  - position ids that start again at 0 for every example,
  - each example's own token type ids,
  - a block-diagonal attention mask [rows, 1, T, T] (True = may attend), so no token sees
    another example; pad tokens attend to each other only, so no softmax row is empty,
  - `cls_index`: where each example's first token landed in the flattened rows, in the micro
    batch's order, so the head pools one vector per example and the logits come out in the
    same order as the plain path's. The loss is therefore the same function of the same
    examples (tests/test_packing.py, and tests/test_families.py for every model family:
    loss and gradients to 1e-5 in fp32). `PackedPooling` adapts this to each family.

The micro batch keeps its examples (the data position, resume and the ledger are unchanged);
only their layout changes. Runs in DataLoader workers, on CPU tensors.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional

import torch


def plan_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """Example indices per row: first-fit decreasing, longest examples placed first."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(capacity - lengths[i])
    return rows


def pack(inputs: dict[str, torch.Tensor], capacity: int,
         rows_multiple: int = 1) -> dict[str, torch.Tensor]:
    """A padded micro batch (input_ids, attention_mask, token_type_ids?, labels?) -> packed.
    `rows_multiple` rounds the number of rows up (empty rows), so a compiled model sees a few
    shapes rather than one per row count."""
    mask = inputs["attention_mask"].bool()
    lengths = mask.sum(dim=1).tolist()
    if max(lengths) > capacity:
        raise ValueError(f"an example of {max(lengths)} tokens does not fit rows of {capacity}")
    rows = plan_rows(lengths, capacity)
    shape = (-(-len(rows) // rows_multiple) * rows_multiple, capacity)
    ids = torch.zeros(shape, dtype=inputs["input_ids"].dtype)
    types = torch.zeros(shape, dtype=torch.long)
    positions = torch.zeros(shape, dtype=torch.long)
    segment = torch.zeros(shape, dtype=torch.long)  # 0: padding, k: the row's k-th example
    cls_index = torch.empty(len(lengths), dtype=torch.long)
    token_types = inputs.get("token_type_ids")
    for r, members in enumerate(rows):
        at = 0
        for k, i in enumerate(members, start=1):
            n = lengths[i]
            real = mask[i]
            ids[r, at:at + n] = inputs["input_ids"][i][real]
            if token_types is not None:
                types[r, at:at + n] = token_types[i][real]
            positions[r, at:at + n] = torch.arange(n)
            segment[r, at:at + n] = k
            cls_index[i] = r * capacity + at
            at += n
    out = {"input_ids": ids, "position_ids": positions,
           "attention_mask": (segment[:, None, :, None] == segment[:, None, None, :]),
           "cls_index": cls_index, "token_mask": segment > 0}
    if token_types is not None:
        out["token_type_ids"] = types
    if "labels" in inputs:
        out["labels"] = inputs["labels"]
    return out


def token_mask(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """[rows, T] True on real tokens, packed or not: what throughput is counted on."""
    return inputs["token_mask"] if "token_mask" in inputs else inputs["attention_mask"]


def lengths_squared(inputs: dict[str, torch.Tensor]) -> int:
    """The sum of each example's length squared (attention's cost), packed or not: over an
    example's tokens, 2 x position + 1 adds up to its length squared."""
    mask = token_mask(inputs)
    positions = inputs.get("position_ids")
    if positions is None:
        positions = torch.arange(mask.shape[1]).expand(mask.shape)
    return int(((2 * positions + 1) * mask).sum())


class PackedPooling:
    """Hooks that let a model of any family (launcher/families.py) read a packed micro batch.

    While `index` is set (see `pooled_at`), the model's own forward gets no attention mask or
    position ids (ModernBERT's mean pooling would read the mask); the base model gets them as
    its family needs them: positions from padding_idx + 1 for RoBERTa, a block mask per
    attention kind for ModernBERT (its sliding-window layers: the block AND the window, which
    is the same window as in a padded row because an example's tokens stay contiguous). The
    module whose output the pooled head reads (BERT's and ALBERT's encoder, before their
    pooler; the base model otherwise) then returns one vector per example, [examples, 1, H]:
    the token at `index`, or ModernBERT's mean over the example's tokens. Heads that read the
    first token read exactly that. No module is replaced: state-dict keys stay the same.
    """

    def __init__(self, model: Any):
        from launcher.engine.model import family_of, module_at

        family = family_of(model.config)
        config = model.config
        self.index: Optional[torch.Tensor] = None
        self._stash: Optional[tuple] = None
        self.offset = config.pad_token_id + 1 if family.positions_after_pad else 0
        self.window = config.sliding_window if family.sliding_window else None
        self.mean = getattr(config, "classifier_pooling", "cls") == "mean"
        base = model.base_model
        model.register_forward_pre_hook(self._take, with_kwargs=True)
        base.register_forward_pre_hook(self._give, with_kwargs=True)
        module_at(base, family.pool_at).register_forward_hook(self._pool)
        if family.embeddings_mask:
            self._mask_kwarg = family.embeddings_mask
            base.embeddings.register_forward_pre_hook(self._unmask, with_kwargs=True)

    def _unmask(self, module, args, kwargs):
        if self.index is None:
            return None
        kwargs[self._mask_kwarg] = None
        return args, kwargs

    def _take(self, module, args, kwargs):
        if self.index is None:
            return None
        self._stash = (kwargs.pop("attention_mask"), kwargs.pop("position_ids"))
        return args, kwargs

    def _give(self, module, args, kwargs):
        if self.index is None:
            return None
        mask, positions = self._stash
        if self.window is not None:
            t = torch.arange(mask.shape[-1], device=mask.device)
            near = (t[:, None] - t[None, :]).abs() <= self.window
            mask = {"full_attention": mask, "sliding_attention": mask & near}
        kwargs.update(attention_mask=mask, position_ids=positions + self.offset)
        return args, kwargs

    def _pool(self, module, args, output):
        if self.index is None:
            return None
        hidden = output[0]
        flat = hidden.flatten(0, 1)
        if self.mean:
            mask, _ = self._stash
            # Each example's tokens are the ones its first token may attend to.
            rows = mask[:, 0].flatten(0, 1).index_select(0, self.index)   # [examples, T]
            width = hidden.shape[1]
            starts = (self.index // width) * width
            weights = torch.zeros(len(self.index), flat.shape[0], dtype=flat.dtype,
                                  device=flat.device)
            cols = starts[:, None] + torch.arange(width, device=flat.device)[None, :]
            weights.scatter_(1, cols, rows.to(flat.dtype))
            pooled = (weights @ flat) / weights.sum(dim=1, keepdim=True)
        else:
            pooled = flat.index_select(0, self.index)
        if isinstance(output, tuple):
            return (pooled[:, None], *output[1:])
        output["last_hidden_state"] = pooled[:, None]
        return output


def install(model: Any) -> PackedPooling:
    """Put the packing hooks on the model (before it is wrapped or sharded)."""
    # A 4D boolean mask goes to SDPA as is; eager attention would add it as numbers.
    model.config._attn_implementation = "sdpa"
    return PackedPooling(model)


@contextlib.contextmanager
def pooled_at(pooler: Optional[PackedPooling], index: Optional[torch.Tensor]) -> Iterator[None]:
    if pooler is None or index is None:
        yield
        return
    pooler.index = index
    try:
        yield
    finally:
        pooler.index = None
        pooler._stash = None


def model_inputs(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What the model's forward takes (the packing bookkeeping stays out)."""
    return {k: v for k, v in inputs.items() if k not in ("cls_index", "token_mask", "labels")}
