"""Masked attention for grouped-query models without copying the KV cache.

transformers' "sdpa" attention, given a padding mask, repeats each key/value head for every query
head that shares it (`repeat_kv`), because PyTorch's fused kernels take no mask together with
grouped heads: a full copy of the cache, times the group size, at every layer and step. A padded
continuous batch always has a mask, and on 2 CPU cores that copy was a fifth of a decoding step
with 32 rows. Here the query heads of one group are folded into the query length instead:
queries [batch, kv_heads, group * q_len, dim] attend to the cache as it is, with the mask tiled
over the group. The arithmetic is the same attention; only float rounding can differ.

Registered under the name "grouped_sdpa" (an `attn_implementation` for `from_pretrained`); calls
without a mask or with a position bias go to transformers' own sdpa function unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "grouped_sdpa"


def grouped_sdpa_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                           value: torch.Tensor, attention_mask: torch.Tensor | None,
                           dropout: float = 0.0, scaling: float | None = None,
                           is_causal: bool | None = None, **kwargs):
    groups = getattr(module, "num_key_value_groups", 1)
    if groups == 1 or attention_mask is None or kwargs.get("position_bias") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    batch, heads, q_len, dim = query.shape
    # Query head h uses key/value head h // groups (repeat_kv's layout): one group's heads are
    # consecutive, so they fold into the query length in that order, and the mask repeats.
    folded = query.reshape(batch, key.shape[1], groups * q_len, dim)
    out = F.scaled_dot_product_attention(folded, key, value,
                                         attn_mask=attention_mask.repeat(1, 1, groups, 1),
                                         dropout_p=dropout, scale=scaling)
    return out.reshape(batch, heads, q_len, value.shape[-1]).transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, grouped_sdpa_attention)
AttentionMaskInterface.register(NAME, sdpa_mask)
