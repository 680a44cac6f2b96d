"""Packed attention: every token attends only to earlier tokens of its own packed sample.

The boundaries come from the loader's cu_seqlens. Registered as a transformers attention
implementation ("omni_packed") with no mask function, so transformers never builds a dense
L x L mask (16384^2 booleans per layer would dominate CPU memory). Per sequence it runs
- flash-attn's varlen kernel when the package is importable and the tensors are on CUDA, else
- PyTorch SDPA (causal) once per sample segment: memory grows with the longest sample, not
  with the packed length.
Without cu_seqlens the whole sequence is one causal segment: the "unmasked" forward that
`curate verify-packing --unmasked` uses to show what a leak looks like.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NAME = "omni_packed"


def packed_kwargs(cu_seqlens: torch.Tensor, packed: bool = True) -> dict:
    """Keyword arguments that carry the sample boundaries down to every attention layer."""
    if not packed:
        return {}
    cu = cu_seqlens.to(torch.int32)
    n = int((cu[1:] - cu[:-1]).max())
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": n, "max_length_k": n}


def _flash_varlen():
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError:
        return None
    return flash_attn_varlen_func


def packed_attention(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0, **kwargs):
    """query (1, H, L, D), key/value (1, Hkv, L, D) -> ((1, L, H, D), None)."""
    cu = kwargs.get("cu_seq_lens_q")
    L = query.shape[2]
    bounds = [0, L] if cu is None else [int(x) for x in cu]
    flash = _flash_varlen() if query.is_cuda else None
    if flash is not None and query.dtype in (torch.float16, torch.bfloat16):
        cu_t = torch.tensor(bounds, dtype=torch.int32, device=query.device)
        n = max(b - a for a, b in zip(bounds, bounds[1:]))
        out = flash(query[0].transpose(0, 1), key[0].transpose(0, 1), value[0].transpose(0, 1), cu_t, cu_t, n, n,
                    dropout_p=dropout if module.training else 0.0, softmax_scale=scaling, causal=True)
        return out.unsqueeze(0), None
    gqa = query.shape[1] != key.shape[1]
    out = torch.empty_like(query)
    for a, b in zip(bounds, bounds[1:]):
        if b > a:
            out[:, :, a:b] = F.scaled_dot_product_attention(
                query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], is_causal=True, scale=scaling,
                dropout_p=dropout if module.training else 0.0, enable_gqa=gqa)
    return out.transpose(1, 2).contiguous(), None


def register_packed_attention() -> str:
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, packed_attention)
    return NAME
