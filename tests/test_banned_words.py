"""The ban and segmentation share one matching rule: every spelling of a transition keyword that
opens a thought is banned, and nothing else is (ALGORITHM.md, "Vocabulary")."""

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from retro_search.engines.banned_words import banned_token_sequences, word_variants
from retro_search.segmentation import DEFAULT_KEYWORDS, opens_thought

# Spellings a model writes; a byte-level BPE trained on them learns most as single tokens.
OPENERS = ["Wait", "WAIT", "wait", "Hmm", "HMM", "hmm", "But wait", "BUT WAIT", "But Wait",
           "Hold on", "HOLD ON", "Alternatively", "ALTERNATIVELY", "Let me check", "LET ME CHECK"]
NOT_OPENERS = ["Waiting", "waiting", "WAITING", "Hmmm", "hmmm", "Hmmmm", "Waits", "Alternatives",
               "Holding", "Waited"]


@pytest.fixture(scope="module")
def tokenizer():
    """A real byte-level BPE tokenizer whose vocabulary holds whole words such as " Waiting",
    " Hmmm" and "WAIT", so a rule that bans "words starting with Wait" would show."""
    corpus = [f"{pre}{word}{post} the answer is 4."
              for word in OPENERS + NOT_OPENERS for pre in ("", " ", "\n\n", "**")
              for post in ("", ",", ".", "**")] * 20
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def blocked(sequences, ids) -> bool:
    """Would generation be stopped somewhere along the token ids `ids`?"""
    singles = {s[0] for s in sequences if len(s) == 1}
    longer = [s for s in sequences if len(s) > 1]
    return any(t in singles or any(ids[:k + 1][-len(s):] == s for s in longer)
               for k, t in enumerate(ids))


def test_the_vocabulary_has_the_long_words_as_single_tokens(tokenizer):
    # Guards the tests below: they mean something only if these are single tokens.
    for word in (" Waiting", " Hmmm", "WAIT", " waiting"):
        assert len(tokenizer.encode(word, add_special_tokens=False)) == 1, word


@pytest.mark.parametrize("spelling", OPENERS)
@pytest.mark.parametrize("context", ["", " ", "\n\n", "So.\n\n", "**"])
def test_every_spelling_that_opens_a_thought_is_banned(tokenizer, spelling, context):
    assert opens_thought(spelling + ", no.")
    sequences = banned_token_sequences(tokenizer, DEFAULT_KEYWORDS)
    ids = tokenizer.encode(context + spelling + ",", add_special_tokens=False)
    n_context = len(tokenizer.encode(context, add_special_tokens=False)) if context else 0
    assert blocked(sequences, ids[max(n_context - 1, 0):]), (context, spelling)


@pytest.mark.parametrize("word", NOT_OPENERS)
@pytest.mark.parametrize("context", ["", " ", "\n\n"])
def test_longer_words_that_do_not_open_a_thought_are_not_banned(tokenizer, word, context):
    assert not opens_thought(word + " for the bus.")
    sequences = banned_token_sequences(tokenizer, DEFAULT_KEYWORDS)
    ids = tokenizer.encode(context + word, add_special_tokens=False)
    assert not blocked(sequences, ids), (context, word, tokenizer.convert_ids_to_tokens(ids))


def test_no_single_banned_token_spells_a_longer_word(tokenizer):
    sequences = banned_token_sequences(tokenizer, DEFAULT_KEYWORDS)
    texts = [tokenizer.decode([s[0]]) for s in sequences if len(s) == 1]
    assert texts and not [t for t in texts if any(w.lower() in t.lower() for w in NOT_OPENERS)]


def test_word_variants_cover_the_case_forms_and_reject_empty_words():
    assert word_variants([" Wait", "but wait"]) == [
        "Wait", "wait", "WAIT", "but wait", "BUT WAIT", "But wait", "But Wait"]
    with pytest.raises(ValueError, match="empty"):
        word_variants(["  "])
