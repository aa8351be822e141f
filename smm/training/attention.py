"""The attention kernel for packed rows (``training.attention``): which one runs, and the kernels.

A packed row holds several conversations; attention must stay inside each. Three ways to do it:

- ``sdpa``: PyTorch's scaled-dot-product attention, what each backend does on its own (Unsloth: one
  call per run of equal-length conversations; transformers: a block-diagonal mask);
- ``flex``: PyTorch's FlexAttention with a document mask (one compiled kernel that skips the
  blocks between conversations; no backward pass on the CPU);
- ``flash``: a varlen flash kernel over the row's cumulative lengths (CUDA, 16-bit): the
  flash-attn package where installed, else the flash kernel bundled with PyTorch.

``auto`` picks ``flash`` on a CUDA GPU with 16-bit compute for Unsloth, and for transformers where
flash-attn is installed; else ``sdpa`` (``flex`` is opt-in for transformers until it is measured
there). The choice and
its reason are logged. On backend ``unsloth`` the kernel replaces Unsloth's per-conversation SDPA
calls (:func:`route_unsloth`); on backend ``hf`` it is the model's attention implementation.
"""
from __future__ import annotations

import functools
import importlib.util
import itertools
import logging
from dataclasses import dataclass

from smm.errors import SmmError

log = logging.getLogger(__name__)

HF_IMPLEMENTATION = {"sdpa": "sdpa", "flex": "flex_attention", "flash": "flash_attention_2"}


@dataclass(frozen=True)
class AttentionChoice:
    kernel: str
    """sdpa, flex or flash"""
    reason: str


def flash_attn_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def choose_attention(requested: str, backend: str, device: str, sixteen_bit: bool,
                     flash_installed: bool | None = None) -> AttentionChoice:
    """The packed-row kernel ``training.attention`` resolves to; a one-line error where an explicit
    choice cannot train here."""
    flash_installed = flash_attn_installed() if flash_installed is None else flash_installed
    if requested == "flex" and device != "cuda":
        raise SmmError("training.attention=flex needs a CUDA GPU (FlexAttention has no backward pass on the CPU); use auto or sdpa")
    if requested == "flash":
        if device != "cuda" or not sixteen_bit:
            raise SmmError("training.attention=flash needs a CUDA GPU and 16-bit compute (model.dtype); use auto or sdpa")
        if backend == "hf" and not flash_installed:
            raise SmmError("training.attention=flash with training.backend=hf needs the flash-attn package (pip install flash-attn); use auto or flex")
    if requested != "auto":
        return AttentionChoice(requested, f"training.attention={requested}")
    if device != "cuda":
        return AttentionChoice("sdpa", "on the CPU (FlexAttention has no backward pass there, flash kernels need CUDA)")
    if flash_installed and sixteen_bit:
        return AttentionChoice("flash", "flash-attn is installed")
    if backend == "unsloth" and sixteen_bit:
        return AttentionChoice("flash", "PyTorch's bundled varlen flash kernel (flash-attn is not installed)")
    return AttentionChoice("sdpa", "flash-attn is not installed (training.attention=flex to try FlexAttention)")


def document_ids(lengths, device):
    """Conversation index of each position of a row made of ``lengths``."""
    import torch

    lengths = torch.as_tensor(list(lengths), device=device)
    return torch.repeat_interleave(torch.arange(len(lengths), device=device), lengths)


@functools.lru_cache(maxsize=8)
def _block_mask(lengths: tuple[int, ...], device: str):
    """A causal document mask as FlexAttention's BlockMask (the same for every layer of a step)."""
    from torch.nn.attention.flex_attention import create_block_mask

    docs = document_ids(lengths, device)

    def same_document_causal(b, h, q, kv):
        return (docs[q] == docs[kv]) & (q >= kv)

    total = sum(lengths)
    return create_block_mask(same_document_causal, None, None, total, total, device=device)


@functools.cache
def _compiled_flex():
    import torch
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=True)


def flex_packed(q, k, v, lengths, scale=None):
    """FlexAttention over one packed row: q (1, H, T, D), k/v (1, H_kv, T, D) -> (1, H, T, D)."""
    from torch.nn.attention.flex_attention import flex_attention

    kernel = _compiled_flex() if q.is_cuda else flex_attention  # compiled on GPU; the CPU runs it unfused
    mask = _block_mask(tuple(int(n) for n in lengths), str(q.device))
    return kernel(q, k, v, block_mask=mask, scale=scale, enable_gqa=k.shape[1] != q.shape[1])


def _flash_function():
    import torch

    class FlashVarlen(torch.autograd.Function):
        """PyTorch's bundled flash kernel over cumulative lengths (grouped-query attention native)."""

        @staticmethod
        def forward(ctx, q, k, v, cu_seqlens, max_seqlen, scale):
            out, lse, rng, unused, _ = torch.ops.aten._flash_attention_forward(
                q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, 0.0, True, False, scale=scale)
            ctx.save_for_backward(q, k, v, cu_seqlens, out, lse, rng, unused)
            ctx.max_seqlen, ctx.scale = max_seqlen, scale
            return out

        @staticmethod
        def backward(ctx, grad):
            q, k, v, cu_seqlens, out, lse, rng, unused = ctx.saved_tensors
            dq, dk, dv = torch.ops.aten._flash_attention_backward(
                grad.contiguous(), q, k, v, out, lse, cu_seqlens, cu_seqlens, ctx.max_seqlen, ctx.max_seqlen,
                0.0, True, rng, unused, scale=ctx.scale)
            return dq, dk, dv, None, None, None

    return FlashVarlen


_FLASH = None
_FLASH_EXPANDS_KV = False  # set once the kernel refuses fewer key/value heads than query heads


def flash_packed(q, k, v, lengths, scale=None):
    """Varlen flash attention over one packed row: q (1, H, T, D), k/v (1, H_kv, T, D) -> (1, H, T, D)."""
    import torch

    global _FLASH, _FLASH_EXPANDS_KV
    _FLASH = _FLASH or _flash_function()
    cu = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32, device=q.device)
    groups = q.shape[1] // k.shape[1]
    if _FLASH_EXPANDS_KV and groups > 1:
        k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    q, k, v = (x[0].transpose(0, 1).contiguous() for x in (q, k, v))  # (T, H, D)
    try:
        out = _FLASH.apply(q, k, v, cu, max(lengths), scale)
    except RuntimeError:
        if groups == 1 or _FLASH_EXPANDS_KV:
            raise
        _FLASH_EXPANDS_KV = True
        out = _FLASH.apply(q, k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1), cu, max(lengths), scale)
    return out.transpose(0, 1).unsqueeze(0)


KERNELS = {"flex": flex_packed, "flash": flash_packed}
calls = {"flex": 0, "flash": 0}
"""Packed attention calls each kernel served in this process (the benchmark checks the route is taken)."""


def route_unsloth(kernel: str) -> bool:
    """Send Unsloth's packed-row SDPA calls (one per run of equal-length conversations) to one
    ``kernel`` call per row; ``sdpa`` restores Unsloth's own. False where Unsloth's dispatcher is
    not the one this was written against (then Unsloth's own path runs, and the caller logs it)."""
    import torch

    try:
        from unsloth.utils import attention_dispatch as dispatch
    except ImportError:
        return False
    original = getattr(dispatch, "_smm_original_packed_segments", None) or getattr(dispatch, "_sdpa_packed_segments", None)
    if original is None:
        return False
    dispatch._smm_original_packed_segments = original
    if kernel == "sdpa":
        dispatch._sdpa_packed_segments = original
        return True
    run = KERNELS[kernel]

    def packed_segments(Q, K, V, lengths, *, n_groups, is_causal, sliding_window, sdpa_kwargs, training=False):
        kept = [n for n in lengths if n > 0]
        if (not is_causal or sliding_window is not None or sdpa_kwargs.get("dropout_p") or sum(kept) != Q.shape[-2]
                or (kernel == "flash" and Q.dtype not in (torch.float16, torch.bfloat16))):
            return original(Q, K, V, lengths, n_groups=n_groups, is_causal=is_causal, sliding_window=sliding_window,
                            sdpa_kwargs=sdpa_kwargs, training=training)
        calls[kernel] += 1
        return run(Q, K, V, kept, scale=sdpa_kwargs.get("scale")).transpose(1, 2)  # (1, T, H, D)

    dispatch._sdpa_packed_segments = packed_segments
    return True


def apply_attention(choice: AttentionChoice, backend: str, model=None) -> None:
    """Install ``choice`` for the run (Unsloth's packed route) and log what runs."""
    if backend == "unsloth":
        if route_unsloth(choice.kernel):
            log.info("Packed attention: %s (%s)", choice.kernel, choice.reason)
        else:
            log.warning("Packed attention: Unsloth's own (its dispatcher changed; training.attention=%s not applied)", choice.kernel)
        return
    config = getattr(model, "config", None)
    log.info("Packed attention: transformers' %s (%s)", getattr(config, "_attn_implementation", "?"), choice.reason)
