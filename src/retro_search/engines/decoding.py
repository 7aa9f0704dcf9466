"""Continuous batching over a Hugging Face causal LM: the decode loop of `TransformersEngine`.

Rows decode together over one KV cache, one token per row and `step()`. A row that finishes
leaves at once and the next waiting request takes its slot, so a batch never keeps computing
rows that stopped, nor waits for its longest rollout before new requests start: rollouts of a
search end at very different lengths.

Cache layout (`kv_cache`): every row is right-aligned in a cache as wide as its longest row. A
newcomer is prefilled on its own (with others that arrive together), then its cache or the
running one is left-padded to the common width and the two are concatenated along the batch;
columns no row needs any more are cut from the left. Each row's attention mask and positions come from its own
length, so padding is invisible to it.

How sampling stays independent of the batch: per row, `_sample` applies the row's temperature
and top-p to its scores and adds Gumbel noise drawn from the row's own `torch.Generator`, seeded
from the request's seed; the argmax over the nucleus of log-probs + Gumbel is an exact sample
from the top-p distribution (the Gumbel-max trick).
Each row draws exactly one vocabulary-sized noise vector per step, on the CPU, so its random
stream never depends on other rows or on the device. Temperature 0 is plain greedy. A row sees
the same logits as the request alone, up to float rounding of a different batch shape; a
rounding difference changes a token only when two candidates tie to about 1e-6, which the tests
never saw happen.

Stopping, per row: end-of-sequence token, first stop string in the DECODED output (a stop string
can sit inside a merged token such as ".\\n\\n"), or `max_tokens`. `num_tokens` counts the tokens
generated up to and including the one that ended generation (EOS or the token that completed the
stop string), like `len(token_ids)` of a vLLM output; the returned text excludes EOS and is cut
before the stop string. Banned words are enforced per row (see `banned_words`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Sequence

import torch
from transformers import DynamicCache

from retro_search.engines.base import GenerationRequest, GenerationResult, request_seed
from retro_search.engines.kv_cache import new_cache


class Bans:
    """Banned sequences of one word list, arranged for per-step lookup."""

    def __init__(self, sequences: list[list[int]], device: torch.device):
        self.singles = torch.tensor([s[0] for s in sequences if len(s) == 1], dtype=torch.long,
                                    device=device)
        # prefix length -> {prefix tuple -> last tokens to mask after that prefix}
        self.after: dict[int, dict[tuple[int, ...], list[int]]] = {}
        for seq in sequences:
            if len(seq) > 1:
                table = self.after.setdefault(len(seq) - 1, {})
                table.setdefault(tuple(seq[:-1]), []).append(seq[-1])


@dataclass(eq=False)
class Row:
    """One request while it waits or decodes; `index` is its place in the caller's list."""

    index: int
    request: GenerationRequest
    prompt: list[int]
    bans: Bans | None
    generator: torch.Generator | None = None
    generated: list[int] = field(default_factory=list)
    window: int = 0  # trailing tokens searched for a stop string

    def __post_init__(self):
        if self.request.temperature > 0:  # temperature 0 stays greedy
            # On the CPU: the noise is the same on every device and for every batch.
            self.generator = torch.Generator().manual_seed(request_seed(self.request))
        if self.request.stop:
            # Enough tokens to hold any stop string (a character is at most 4 byte tokens).
            self.window = 4 * max(map(len, self.request.stop)) + 2

    @property
    def cached(self) -> int:
        """Tokens of this row in the KV cache: the prompt and all but the newest generated."""
        return len(self.prompt) + len(self.generated) - 1


def _next_tokens(rows: Sequence[Row], scores: torch.Tensor) -> list[int]:
    """The next token of each of `rows` (row i of `scores` is rows[i]): bans applied, then
    greedy, or a sample from the row's temperature and top-p distribution."""
    scores = scores.float()
    for i, row in enumerate(rows):
        bans = row.bans
        if bans is None:
            continue
        if bans.singles.numel():
            scores[i, bans.singles] = float("-inf")
        for length, table in bans.after.items():
            if len(row.generated) >= length:
                tail = tuple(row.generated[-length:])
                if tail in table:
                    scores[i, table[tail]] = float("-inf")
    sampled = [i for i, row in enumerate(rows) if row.generator is not None]
    if len(sampled) == len(rows):  # the usual case: no gather, no scatter
        return _sample(scores, rows).tolist()
    tokens = scores.argmax(dim=-1)  # temperature 0: greedy
    if sampled:
        tokens[sampled] = _sample(scores[sampled], [rows[i] for i in sampled])
    return tokens.tolist()


def _sample(scores: torch.Tensor, rows: Sequence[Row]) -> torch.Tensor:
    """One token per row from softmax(scores / temperature) cut to its top-p nucleus.

    Gumbel-max: argmax(log-probs + Gumbel noise) is an exact sample; restricted to the nucleus it
    is an exact sample from the nucleus. The nucleus is every token at least as likely as the
    last one needed to reach top_p, i.e. the tokens whose more likely tokens hold at most top_p
    of the mass. That is a rule on probability values (ties are kept or dropped together, no
    sort order decides), and it is checked for the winner only: a winner outside is masked with
    every token no more likely than it, and the argmax is taken again. The winner is rarely
    outside, so this costs a few passes over the vocabulary instead of a sort of it.
    """
    device = scores.device
    temperature = torch.tensor([[row.request.temperature] for row in rows], device=device)
    # top_p 1 keeps everything (inf, so float error in the mass cannot drop a token).
    top_p = torch.tensor([[p if (p := row.request.top_p) < 1 else float("inf")] for row in rows],
                         device=device)
    logp = torch.log_softmax(scores / temperature, dim=-1)
    # One vocabulary-sized draw per row and step, from the row's own generator.
    uniform = torch.stack([torch.rand(scores.shape[-1], generator=row.generator) for row in rows])
    keys = logp + (-torch.log(-torch.log(uniform))).to(device)
    probs = logp.exp()
    while True:
        choice = keys.argmax(dim=-1, keepdim=True)
        p_choice = probs.gather(-1, choice)
        more_likely = torch.where(probs > p_choice, probs, 0.0).sum(dim=-1, keepdim=True)
        outside = more_likely > top_p
        if not bool(outside.any()):
            return choice.squeeze(-1)
        keys = keys.masked_fill(outside & (probs <= p_choice), float("-inf"))


def take_group(waiting: deque[Row], free: int, max_tokens: int) -> list[Row]:
    """Pop the next prefill group off `waiting`: at most `free` rows whose padded width times
    their number stays within `max_tokens` (the first row always comes, however long)."""
    group = [waiting.popleft()]
    width = len(group[0].prompt)
    while waiting and len(group) < free:
        wider = max(width, len(waiting[0].prompt))
        if (len(group) + 1) * wider > max_tokens:
            break
        group.append(waiting.popleft())
        width = wider
    return group


class ContinuousBatch:
    """Requests waiting (`waiting`, served first come first served) and rows decoding (`rows`).

    At most `batch_size` rows decode together; newcomers are prefilled in groups of at most
    `max_batch_tokens` padded prompt tokens. The cap is for the prefill: with an attention mask,
    PyTorch's CPU attention materialises every score matrix, so a group of long padded prompts is
    far slower than the same prompts one by one (measured on 2 cores with the tiny model and 16
    prompts of 0.4k-5k tokens: 5.9 s as one batch, 0.9 s one by one). Decoding a token looks at
    one query per row, so the running batch has no such cap.
    """

    def __init__(self, model, tokenizer, eos_ids: set[int], pad_id: int, batch_size: int,
                 max_batch_tokens: int):
        self.model, self.tokenizer = model, tokenizer
        self.eos_ids, self.pad_id = eos_ids, pad_id
        self.batch_size, self.max_batch_tokens = batch_size, max_batch_tokens
        self.device = model.device
        # Where the cache cannot be rearranged (see `kv_cache.new_cache`), newcomers wait until
        # the running rows have all finished.
        self.joinable = new_cache(model.config)[1]
        self.waiting: deque[Row] = deque()
        self.rows: list[Row] = []
        self.cache: DynamicCache | None = None
        self.logits: torch.Tensor | None = None  # next-token scores, a row per row of `rows`

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.rows)

    @torch.inference_mode()
    def step(self) -> list[tuple[Row, GenerationResult]]:
        """Admit waiting requests into free slots, then generate one token for every row.
        Returns the rows that finished, with their results."""
        while self.waiting and len(self.rows) < self.batch_size and (self.joinable or not self.rows):
            group = take_group(self.waiting, self.batch_size - len(self.rows), self.max_batch_tokens)
            self._join(group, *self._prefill(group))
        tokens = _next_tokens(self.rows, self.logits)
        keep, finished = [], []
        for i, (row, token) in enumerate(zip(self.rows, tokens)):
            row.generated.append(token)
            ending = self._ending(row)
            if ending is None:
                keep.append(i)
            else:
                finished.append((row, self._result(row, *ending)))
        if finished:
            index = torch.tensor(keep, dtype=torch.long, device=self.device)
            self.rows = [self.rows[i] for i in keep]
            tokens = [tokens[i] for i in keep]
            if self.rows:
                self.cache.batch_select_indices(index)
                self._cut_unused_columns()
            else:
                self.cache = self.logits = None
        if self.rows:
            self._decode(tokens)
        return finished

    def _mask(self, lengths: list[int], width: int) -> torch.Tensor:
        """Attention mask of right-aligned rows of `lengths` in `width` columns."""
        lengths_t = torch.tensor(lengths, device=self.device)[:, None]
        return (torch.arange(width, device=self.device)[None, :] >= width - lengths_t).long()

    def _prefill(self, group: list[Row]) -> tuple[DynamicCache, torch.Tensor]:
        width = max(len(row.prompt) for row in group)
        input_ids = torch.full((len(group), width), self.pad_id, dtype=torch.long)
        for i, row in enumerate(group):
            input_ids[i, width - len(row.prompt):] = torch.tensor(row.prompt)
        mask = self._mask([len(row.prompt) for row in group], width)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # a padded row sees unpadded positions
        cache, _ = new_cache(self.model.config)
        logits = self.model(input_ids=input_ids.to(self.device), attention_mask=mask,
                            position_ids=positions, past_key_values=cache, use_cache=True,
                            logits_to_keep=1).logits[:, -1, :]
        return cache, logits

    def _join(self, group: list[Row], cache: DynamicCache, logits: torch.Tensor) -> None:
        if not self.rows:
            self.rows, self.cache, self.logits = group, cache, logits
            return
        for mine, new in zip(self.cache.layers, cache.layers):
            mine.join(new)
        self.rows = self.rows + group
        self.logits = torch.cat([self.logits, logits])

    def _cut_unused_columns(self) -> None:
        """Drop the leading columns that only the rows that left needed."""
        if not self.joinable:
            return
        cut = self.cache.get_seq_length() - max(row.cached for row in self.rows)
        if cut > 0:
            for layer in self.cache.layers:
                layer.cut_left(cut)

    def _decode(self, tokens: list[int]) -> None:
        """Feed each row its newest token; keep the next-token scores."""
        width = self.cache.get_seq_length() + 1
        mask = self._mask([row.cached + 1 for row in self.rows], width)
        positions = torch.tensor([[row.cached] for row in self.rows], device=self.device)
        input_ids = torch.tensor(tokens, device=self.device)[:, None]
        self.logits = self.model(input_ids=input_ids, attention_mask=mask,
                                 position_ids=positions, past_key_values=self.cache,
                                 use_cache=True, logits_to_keep=1).logits[:, -1, :]

    def _ending(self, row: Row) -> tuple[int, str, str | None] | None:
        """(tokens generated, reason, stop string) once `row` is finished, reason in
        {"eos", "stop", "length"}; None while it goes on."""
        tokens = row.generated
        n = len(tokens)
        if tokens[-1] in self.eos_ids:
            return n, "eos", None
        if row.request.stop:
            text = self.tokenizer.decode(tokens[-row.window:], skip_special_tokens=True,
                                         clean_up_tokenization_spaces=False)
            hit = next((s for s in row.request.stop if s in text), None)
            if hit is not None:
                return n, "stop", hit
        if n >= row.request.max_tokens:
            return n, "length", None
        return None

    def _result(self, row: Row, n: int, reason: str, stop: str | None) -> GenerationResult:
        request = row.request
        kept = row.generated[:n - 1] if reason == "eos" else row.generated[:n]
        text = self.tokenizer.decode(kept, skip_special_tokens=True,
                                     clean_up_tokenization_spaces=False)
        if reason == "stop":
            # Cut at the earliest stop string in the full text (the tail check only saw a window).
            hits = [(text.find(s), i, s) for i, s in enumerate(request.stop) if s in text]
            if hits:
                position, _, stop = min(hits)
                text = text[:position]
        return GenerationResult(request_id=request.request_id, text=text, num_tokens=n,
                                finish_reason="length" if reason == "length" else "stop",
                                stop_string=stop)
