"""``training.dpo.packing``: DPO's padded batch of chosen and rejected rows run as one padding-free row.

TRL's DPOTrainer pads the 2 x batch rows (prompt + chosen, prompt + rejected) to the longest and
calls the model with ``fused_lm_head=True``, which returns per-token log-probabilities. With
conversations of mixed lengths most of that padded rectangle is padding. :func:`packed_rows`
hooks the causal LM so that each such call instead runs the rows' real tokens back to back in one
row, positions restarting at every row (attention stays inside each: Unsloth infers the rows from
the positions, transformers builds a block-diagonal mask from them), with each row's own shifted
labels, and puts the per-token results back in the padded layout TRL reads. The loss, log-probs
and gradients are those of the padded batch; the padding is never computed.
"""
from __future__ import annotations

import contextlib

PER_TOKEN_FIELDS = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1", "label_mask")


def pack(input_ids, attention_mask, labels):
    """(input_ids, position_ids, shift_labels) of one row holding each padded row's real tokens, and
    the rows' lengths. Rows are right-padded (TRL's DPO collator); each row's last position predicts
    nothing, so no label crosses into the next row."""
    import torch

    lengths = attention_mask.sum(1).tolist()
    ids, positions, shifted = [], [], []
    for row, n in enumerate(lengths):
        ids.append(input_ids[row, :n])
        positions.append(torch.arange(n, device=input_ids.device))
        shifted.append(torch.cat([labels[row, 1:n], labels.new_full((1,), -100)]))
    return torch.cat(ids)[None], torch.cat(positions)[None], torch.cat(shifted)[None], lengths


def unpack(packed, lengths: list[int], width: int):
    """Per-token values of the packed row (1, T) back in the padded layout (rows, width - 1) that
    ``fused_lm_head`` returns for unshifted labels; zero where the padded call has no label."""
    out = packed.new_zeros((len(lengths), width - 1))
    start = 0
    for row, n in enumerate(lengths):
        out[row, :n - 1] = packed[0, start:start + n - 1]
        start += n
    return out


@contextlib.contextmanager
def packed_rows(model, enabled: bool = True):
    """While active, every ``fused_lm_head`` call of ``model`` (a PEFT model or a causal LM) with a
    padded batch runs as one padding-free row (see the module docstring)."""
    if not enabled:
        yield
        return
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    pending: list = []

    def before(module, args, kwargs):
        mask, labels = kwargs.get("attention_mask"), kwargs.get("labels")
        if not kwargs.get("fused_lm_head") or mask is None or labels is None or args or mask.dim() != 2:
            pending.append(None)
            return None
        ids, positions, shift_labels, lengths = pack(kwargs["input_ids"], mask, labels)
        pending.append((lengths, mask.shape[1]))
        kwargs = {k: v for k, v in kwargs.items() if k not in ("attention_mask", "labels", "position_ids")}
        return args, {**kwargs, "input_ids": ids, "position_ids": positions, "shift_labels": shift_labels}

    def after(module, args, kwargs, output):
        layout = pending.pop()
        if layout is None:
            return None
        lengths, width = layout
        for field in PER_TOKEN_FIELDS:
            value = getattr(output, field, None)
            if value is not None:
                output[field] = unpack(value, lengths, width)
        return output

    handles = [causal_lm.register_forward_pre_hook(before, with_kwargs=True),
               causal_lm.register_forward_hook(after, with_kwargs=True)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
