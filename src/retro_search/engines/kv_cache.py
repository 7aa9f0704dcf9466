"""The KV cache of a continuous batch: rows can leave, join and lose leading columns.

Keys and values of each layer live in a buffer with room for `HEADROOM` more columns; the cache
shows views of its filled part. transformers' `DynamicLayer` concatenates at every step, which
copies the whole cache per generated token: with 32 rows of 500 tokens that copy was an eighth of
a CPU decoding step. Here a step writes one column and a copy happens every `HEADROOM` steps.

Rows are right-aligned (see `decoding`), so joining rows of another width pads the narrower
side on the left, and the columns left of the longest remaining row can be cut.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

HEADROOM = 256  # columns allocated ahead: copies per step amortised, memory bounded


class GrowingLayer(DynamicLayer):
    """A `DynamicLayer` whose keys and values are views into buffers with spare columns."""

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self._set(key_states[:, :, :0], value_states[:, :, :0], HEADROOM)

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        length, new = self.keys.shape[-2], key_states.shape[-2]
        if length + new > self._key_buffer.shape[-2]:
            self._set(self.keys, self.values, new + HEADROOM)
        self._key_buffer[:, :, length:length + new] = key_states
        self._value_buffer[:, :, length:length + new] = value_states
        self.keys = self._key_buffer[:, :, :length + new]
        self.values = self._value_buffer[:, :, :length + new]
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._set(self.keys[indices], self.values[indices], HEADROOM)

    def cut_left(self, columns: int) -> None:
        """Drop the first `columns` columns of every row (views: nothing is copied)."""
        self._key_buffer = self._key_buffer[:, :, columns:]
        self._value_buffer = self._value_buffer[:, :, columns:]
        self.keys, self.values = self.keys[:, :, columns:], self.values[:, :, columns:]

    def join(self, other: GrowingLayer) -> None:
        """Append the rows of `other`, left-padding either side to the wider of the two."""
        width = max(self.keys.shape[-2], other.keys.shape[-2])
        self._set(torch.cat([_pad_left(self.keys, width), _pad_left(other.keys, width)]),
                  torch.cat([_pad_left(self.values, width), _pad_left(other.values, width)]),
                  HEADROOM)

    def _set(self, keys: torch.Tensor, values: torch.Tensor, spare: int) -> None:
        """Copy `keys` and `values` into new buffers with `spare` free columns."""
        batch, heads, length, dim = keys.shape
        self._key_buffer = keys.new_empty(batch, heads, length + spare, dim)
        self._value_buffer = values.new_empty(batch, heads, length + spare, values.shape[-1])
        self._key_buffer[:, :, :length] = keys
        self._value_buffer[:, :, :length] = values
        self.keys = self._key_buffer[:, :, :length]
        self.values = self._value_buffer[:, :, :length]


def new_cache(config) -> tuple[DynamicCache, bool]:
    """An empty cache for a model of `config`, and whether its rows can join and be cut.

    Models whose cache is all plain layers get `GrowingLayer`s; others (sliding windows, linear
    attention) keep transformers' own layers, whose bookkeeping must not be rearranged.
    """
    cache = DynamicCache(config=config)
    joinable = bool(cache.layers) and all(type(layer) is DynamicLayer for layer in cache.layers)
    if joinable:
        cache.layers = [GrowingLayer() for _ in cache.layers]
    return cache, joinable


def _pad_left(states: torch.Tensor, width: int) -> torch.Tensor:
    """Zero columns in front of [batch, heads, length, dim] states, up to `width`."""
    missing = width - states.shape[-2]
    return F.pad(states, (0, 0, missing, 0)) if missing > 0 else states
