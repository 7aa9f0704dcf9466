"""Expand banned words into the token-id sequences an engine must never complete.

A `GenerationRequest` bans transition keywords such as "Wait" while the search writes the first
step of a rollout, so that the model continues its current thought. A byte-level BPE model can
spell a word with many token sequences ("Wait", " Wait", "\\n\\nWait", ".\\n\\nWait" ...), and
masking one id would let the model slip through another. The contract of `banned_token_sequences`:

Semantics: the matching rule is segmentation's (`segmentation.keyword_regex`, one rule for both):
a banned word is forbidden wherever it starts a word in the output, in any letter case, when it
is not followed by a word character. "WAIT," and "wait" are banned with "Wait"; "Waiting" and
"Hmmm" are not, because they do not open a thought.

What is banned (all ids are the tokenizer's):
1. every vocabulary token whose decoded text contains a keyword by that rule (" Wait", "WAIT",
   "\\n\\nWait", ".Wait", "wait," ...): banned as single tokens, masked at every step;
2. the canonical tokenisation of each case form of each word (as given, lower, upper, capitalised,
   title case) after "", " ", "\\n", "\\n\\n", with the tokens that only spell the context removed
   (["But", " wait"] for "But wait"): the last token is masked when the output ends with the
   others;
3. for those sequences, every token that spells the first token's text behind leading spaces,
   newlines or punctuation ("\\n\\nLet", "(Let", "**Let") replaces the first token, so a phrase
   after a paragraph break or markdown is caught too.
Not covered (documented limits): non-canonical spellings that split the word in unusual places
("W" + "ait") and case forms other than the five above spelt over several tokens; trained models
rarely produce them (not measured here). And a token that ends exactly where a keyword ends is
masked although a following token could have made a longer word of it ("Wait" + "ing"): which
token comes next is not known when the mask is applied. "Waiting" spelt as its own token stays
allowed.

Both engines enforce exactly these sequences: the transformers engine itself, the vLLM adapter as
a `logit_bias` of -100 on the single tokens and through vLLM's bad-words pass for the longer ones.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Sequence

from retro_search.segmentation import KEYWORD_FLAGS, keyword_regex

# Contexts a transition word typically follows; the tokens that spell only the context are dropped.
_CONTEXTS = ("", " ", "\n", "\n\n")
# A keyword "starts a word" when not preceded by a letter or digit (underscores and markdown count
# as separators, so "_Wait" and "**Wait**" are caught, as segmentation's leading markup is).
_WORD_START = r"(?<![^\W_])"
_LEADING_SEPARATORS = re.compile(r"^[\W_]+")


def word_variants(words: Iterable[str]) -> list[str]:
    """The case forms of each word spelt out as token sequences: as given,
    lower case, upper case, capitalised, title case (order kept, no duplicates).

    Leading and trailing whitespace is dropped ("with a leading space" is handled by tokenisation).
    Raises ValueError for an empty word, which would ban everything.
    """
    variants: list[str] = []
    for word in words:
        w = word.strip()
        if not w:
            raise ValueError(f"banned word {word!r} is empty: it would ban every token")
        for v in (w, w.lower(), w.upper(), w[0].upper() + w[1:], w.title()):
            if v not in variants:
                variants.append(v)
    return variants


def vocab_texts(tokenizer: Any) -> list[str]:
    """The decoded text of every token id of `tokenizer`, index = id (special tokens included)."""
    ids = [[i] for i in range(len(tokenizer))]
    return tokenizer.batch_decode(ids, skip_special_tokens=False,
                                  clean_up_tokenization_spaces=False)


def _strip_context(tokenizer: Any, ids: list[int], context: str) -> list[int]:
    """Drop the leading tokens of `ids` that only spell (part of) `context`."""
    j = 0
    while j < len(ids) - 1:
        text = tokenizer.decode(ids[: j + 1], skip_special_tokens=False,
                                clean_up_tokenization_spaces=False)
        if not context.startswith(text):
            break
        j += 1
    return ids[j:]


def banned_token_sequences(tokenizer: Any, words: Sequence[str], *,
                           texts: Sequence[str] | None = None) -> list[list[int]]:
    """Token-id sequences that spell the banned `words` (see the module docstring for the rules).

    Returns sorted, de-duplicated sequences: length-1 entries are tokens banned at every step;
    longer ones ban their last token when the generated output ends with the others. Sequences
    that contain an already banned single token are dropped (impossible or implied). `texts` may
    pass a precomputed `vocab_texts(tokenizer)` (decoding a 150k vocabulary takes about a second).
    """
    if not words:
        return []
    texts = list(texts) if texts is not None else vocab_texts(tokenizer)
    variants = word_variants(words)
    # Rule 1 in one pass over the vocabulary, with segmentation's rule at every word start.
    pattern = re.compile(_WORD_START + keyword_regex(words), KEYWORD_FLAGS)
    singles = {tid for tid, text in enumerate(texts) if pattern.search(text)}
    # Rule 3 lookup: token text without leading separators -> the ids that spell it.
    by_head: dict[str, list[int]] = {}
    for tid, text in enumerate(texts):
        by_head.setdefault(_LEADING_SEPARATORS.sub("", text), []).append(tid)
    longer: set[tuple[int, ...]] = set()
    for variant in variants:
        for context in _CONTEXTS:
            # Rule 2: canonical spelling after a typical context.
            ids = tokenizer.encode(context + variant, add_special_tokens=False)
            seq = tuple(_strip_context(tokenizer, list(ids), context))
            if len(seq) == 1:
                singles.add(seq[0])
            elif seq:
                longer.add(seq)
                # Rule 3: the first token spelt behind whitespace or punctuation.
                head = _LEADING_SEPARATORS.sub("", texts[seq[0]])
                if head:
                    longer.update((tid,) + seq[1:] for tid in by_head.get(head, ()))
    # A sequence through a banned single token is already impossible (or implied): drop it.
    kept = [seq for seq in longer if not singles.intersection(seq)]
    return sorted([[t] for t in singles] + [list(s) for s in kept])
