"""A tiny local causal LM with an R1-distill-style tokenizer and chat template, built offline.

`build_tiny_model(out_dir)` writes a Hugging Face model directory that `AutoTokenizer.from_pretrained`
and `AutoModelForCausalLM.from_pretrained` load with `HF_HUB_OFFLINE=1`. It exists so that tests, the
demo and CI exercise the real transformers code paths without downloading weights.

What it contains:
- a byte-level BPE tokenizer trained with `tokenizers` on a built-in, deterministic corpus of
  R1-style math reasoning ("Wait", "Alternatively", "Hmm", `\\boxed{}`, digits, LaTeX), so the words
  the search bans and the strings it stops at (`"\\n\\n"`, `</think>`) are real tokens;
- special tokens `<|begin_of_text|>` (bos), `<|end_of_text|>` (eos), `<|pad|>` (pad), `<|User|>`,
  `<|Assistant|>`; `<think>` and `</think>` are added tokens that are NOT special, so they survive
  `decode(..., skip_special_tokens=True)` like in DeepSeek-R1-Distill tokenizers;
- a chat template like R1-distill's: `bos`, user turns as `<|User|>...`, assistant turns as
  `<|Assistant|>...<|end_of_text|>`, and the generation prompt `<|Assistant|><think>\\n`;
- a randomly initialised `LlamaForCausalLM` (a Llama config: with a Qwen2 config `AutoTokenizer`
  would swap in Qwen2's tokenizer class and change the ids), head size 32 (2 query heads sharing
  1 key-value head in 64 dimensions): vLLM's CPU attention refuses head size 16 and takes 32, so
  the same model runs on both engines. Its weights depend only on `seed` and the size arguments. By default its text is gibberish made of corpus words, for plumbing tests;
  `train_steps=200` (about 30 s on a CPU) makes it write R1-shaped traces for demos.

Assistant turns for fine-tuning carry the reasoning themselves:
`{"role": "assistant", "content": "<think>\\n...\\n</think>\\n\\nsolution"}`.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path
from typing import Any

BOS, EOS, PAD = "<|begin_of_text|>", "<|end_of_text|>", "<|pad|>"
USER, ASSISTANT = "<|User|>", "<|Assistant|>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"

# R1-distill style: the generation prompt opens the reasoning block. `{% generation %}` marks the
# assistant's tokens so TRL can train on them only (`return_assistant_tokens_mask`).
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}"
    "{% elif message['role'] == 'user' %}{{ '" + USER + "' + message['content'] }}"
    "{% elif message['role'] == 'assistant' %}{{ '" + ASSISTANT + "' }}"
    "{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '" + ASSISTANT + THINK_OPEN + "\\n' }}{% endif %}"
)

_SPLIT_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_TRANSITIONS = ["Wait", "Alternatively", "Hmm", "But wait", "Hold on", "Let me double-check",
                "Let me verify", "Let me check", "On second thought", "Another approach"]
_OPENERS = ["Okay, so I need to find {q}.", "Alright, let me figure out {q}.",
            "Okay, let's see. The problem asks for {q}.", "First, I should understand {q}."]
_CHECKS = ["is it really {a}?", "did I make a mistake?", "let me recompute: the result is {a}.",
           "maybe there is a simpler way.", "that seems right.", "I think I misread the question.",
           "plugging {a} back in confirms it.", "what if the numbers were negative?",
           "the units should match, so {a} makes sense.", "I should consider the other case."]
# Extra words so BPE has enough material for a vocabulary of about 2000 tokens.
_WORDS = """angle area average axis base binomial chord circle coefficient combination constant
coordinate cube cylinder decimal degree denominator derivative diagonal diameter difference digit
distance divisor domain edge ellipse equation estimate exponent expression factor fraction function
graph height hexagon hypotenuse identity inequality integer integral intercept interval inverse
length limit line logarithm matrix maximum mean median midpoint minimum modulo multiple numerator
octagon parabola parallel pattern pentagon percent perimeter perpendicular polygon polynomial prime
prism probability product proportion pyramid quadrant quadratic quotient radius range ratio
rational reciprocal rectangle remainder root rotation sequence series slope sphere square
statistic subtraction symmetry tangent theorem triangle variable vector vertex volume width
assume check compute consider count define derive divide double evaluate expand factorize
guess halve imply integrate know list multiply note observe plot prove recall rewrite simplify
solve substitute suppose test verify careful clever correct different easy equal exact false
greater hard large negative obvious odd even positive possible simple small smaller strange true
unique whole maybe perhaps therefore hence since because although instead again actually
answer argument bound case claim condition contradiction counterexample digit sum estimate example
formula hypothesis induction lemma method parity region result solution step strategy table value
addition alternate approximate bisect cancel collect combine complete convert cross distribute
eliminate enumerate extend group isolate match measure order pair project reduce reflect scale
shift sketch split square swap translate arithmetic geometric harmonic convex concave discrete
continuous finite infinite modular periodic random uniform weighted
""".split()
_UNITS = ["apples", "marbles", "coins", "books", "students", "miles", "dollars", "cookies",
          "pencils", "tickets", "hours", "meters"]


def _problem(rng: random.Random) -> tuple[str, str, list[str]]:
    """One random math problem: (question, answer, reasoning steps), LaTeX in `$...$`."""
    a, b, c = rng.randint(2, 999), rng.randint(2, 999), rng.randint(2, 12)
    kind = rng.randrange(7)
    if kind == 0:
        q, ans = f"the value of ${a} + {b} \\times {c}$", a + b * c
        steps = [f"Multiplication comes first, so ${b} \\times {c} = {b * c}$.",
                 f"Then ${a} + {b * c} = {a + b * c}$."]
    elif kind == 1:
        q, ans = f"$x$ if ${c}x + {a} = {c * b + a}$", b
        steps = [f"Subtract {a} from both sides: ${c}x = {c * b}$.",
                 f"Divide by {c}: $x = \\frac{{{c * b}}}{{{c}}} = {b}$."]
    elif kind == 2:
        unit = rng.choice(_UNITS)
        q, ans = f"how many {unit} remain if there are {a + b} {unit} and {b} are taken away", a
        steps = [f"There are {a + b} {unit} at the start.",
                 f"Taking away {b} leaves ${a + b} - {b} = {a}$ {unit}."]
    elif kind == 3:
        q, ans = f"the area of a rectangle with sides {a} and {c}", a * c
        steps = ["The area of a rectangle is length times width, $A = l \\cdot w$.",
                 f"So $A = {a} \\cdot {c} = {a * c}$."]
    elif kind == 4:
        q, ans = f"the sum of the first {c} positive integers", c * (c + 1) // 2
        steps = [f"The formula is $\\frac{{n(n+1)}}{{2}}$ with $n = {c}$.",
                 f"That gives $\\frac{{{c} \\cdot {c + 1}}}{{2}} = {c * (c + 1) // 2}$."]
    elif kind == 5:
        q, ans = f"$\\sqrt{{{c * c}}} + {c}^2$", c + c * c
        steps = [f"The square root of {c * c} is {c}, since ${c}^2 = {c * c}$.",
                 f"Adding ${c}^2 = {c * c}$ gives ${c} + {c * c} = {c + c * c}$."]
    else:
        q, ans = f"the remainder when {a * c + c - 1} is divided by {c}", c - 1
        steps = [f"We have ${a * c + c - 1} = {c} \\cdot {a} + {c - 1}$.",
                 f"So the remainder is ${a * c + c - 1} \\bmod {c} = {c - 1}$."]
    return q, str(ans), steps


def corpus_examples(n_problems: int = 400, seed: int = 1234) -> list[tuple[str, str, str]]:
    """Deterministic R1-style examples: (question, reasoning, solution) triples.

    The reasoning is steps separated by blank lines, some opening with a transition word ("Wait",
    "Alternatively", ...), some filler; the solution states the answer in `\\boxed{}`.
    """
    rng = random.Random(seed)
    examples = []
    for _ in range(n_problems):
        q, ans, steps = _problem(rng)
        body = [rng.choice(_OPENERS).format(q=q)] + steps
        for _ in range(rng.randint(1, 3)):
            check = rng.choice(_CHECKS).format(a=ans)
            body.insert(rng.randint(1, len(body)), f"{rng.choice(_TRANSITIONS)}, {check}")
        for _ in range(rng.randint(1, 4)):
            w = rng.sample(_WORDS, 4)
            body.insert(rng.randint(1, len(body)),
                        f"Note that the {w[0]} of the {w[1]} is {rng.randint(0, 9999)}, so we "
                        f"{w[2]} the {w[3]} {rng.choice(['again', 'first', 'carefully', 'now'])}.")
        body.append(f"So the answer is {ans}.")
        examples.append((f"What is {q}? Put the final answer in \\boxed{{}}.", "\n\n".join(body),
                         f"The answer is $\\boxed{{{ans}}}$."))
    return examples


def corpus_lines() -> list[str]:
    """The tokenizer's training text: per example a question line and reasoning + solution.

    The marker tokens (`<think>`, `<|User|>`, ...) are added tokens, so they stay out of the text
    BPE learns from.
    """
    lines = []
    for question, reasoning, solution in corpus_examples():
        lines += [question, f"{reasoning}\n\n{solution}"]
    return lines


def _train_tokenizer(vocab_size: int):
    """Byte-level BPE over the corpus; `vocab_size` counts every token, added ones included."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [BOS, EOS, PAD, USER, ASSISTANT]
    tok = Tokenizer(models.BPE())
    # Llama-3 / Qwen2-style split (not GPT-2's): "\n\n" stays one piece and punctuation takes the
    # newlines after it, so tokens such as ".\n\n" exist, as in the models the search runs on.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 2, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(corpus_lines(), trainer=trainer)
    # Added after training so they get the last ids; not special, so they decode back into text.
    tok.add_tokens([AddedToken(t, special=False, normalized=False)
                    for t in (THINK_OPEN, THINK_CLOSE)])
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
        additional_special_tokens=[USER, ASSISTANT], clean_up_tokenization_spaces=False)
    hf_tok.chat_template = CHAT_TEMPLATE
    return hf_tok


def build_tiny_model(out_dir: str | Path, *, seed: int = 0, vocab_size: int = 2048,
                     hidden_size: int = 64, num_layers: int = 2, num_heads: int = 2,
                     num_kv_heads: int = 1, intermediate_size: int = 128,
                     max_position_embeddings: int = 32768, logit_scale: float = 20.0,
                     train_steps: int = 0, train_batch_size: int = 16,
                     tokenizer: Any = None) -> Path:
    """Write a tiny random Llama model and its tokenizer to `out_dir`; return the directory.

    Offline and a few seconds on a laptop CPU. The same arguments give the same tokenizer and the
    same weights (float32) on every run. `vocab_size` is an upper bound: the model's vocabulary is
    exactly the tokenizer's (BPE may learn fewer merges than asked for on the small corpus).
    `logit_scale` multiplies the output layer's random weights so that next-token distributions
    are peaked like a trained model's (a few likely tokens) instead of nearly uniform.

    `train_steps` > 0 then fits the model to the corpus in chat format (AdamW,
    `train_batch_size` x 256 tokens a step, about 0.1-0.2 s a step at 16 on one CPU thread): 200 steps are enough for it to write
    R1-shaped answers (blank-line steps, transition words, `</think>`, a boxed answer, EOS), which
    makes end-to-end demos finish rollouts; the answers stay mostly wrong. Training runs on one
    thread so the weights are the same on every run on a machine (other CPUs may round
    differently).

    `tokenizer`: None for the BPE tokenizer above (`vocab_size` tokens at most), or a tokenizer
    made elsewhere with the same special tokens, markers and chat template
    (`miniature.miniature_tokenizer`); `vocab_size` is then ignored.
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from retro_search.engines.transformers_engine import quiet_progress_bars

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if tokenizer is None:
        tokenizer = _train_tokenizer(vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads, max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    # Weights come from the global RNG; fork it so building a model does not disturb the caller.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(torch.float32)
        with torch.no_grad():
            model.lm_head.weight.mul_(logit_scale)
    if train_steps > 0:
        _fit_to_corpus(model, tokenizer, train_steps, seed, batch_size=train_batch_size)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    with quiet_progress_bars():
        model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _fit_to_corpus(model, tokenizer, steps: int, seed: int, batch_size: int = 16,
                   seq_len: int = 256, lr: float = 3e-3) -> None:
    """Next-token training on the corpus rendered with the chat template, packed into chunks."""
    import torch

    texts = [tokenizer.apply_chat_template(
        [{"role": "user", "content": q},
         {"role": "assistant", "content": f"{THINK_OPEN}\n{r}\n{THINK_CLOSE}\n\n{s}"}],
        tokenize=False) for q, r, s in corpus_examples()]
    stream = [i for ids in tokenizer(texts, add_special_tokens=False).input_ids for i in ids]
    chunks = torch.tensor(stream[:len(stream) // seq_len * seq_len]).view(-1, seq_len)
    batches = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the same float reductions, hence weights, every run
    try:
        model.train()
        for _ in range(steps):
            batch = chunks[torch.randint(len(chunks), (batch_size,), generator=batches)]
            model(input_ids=batch, labels=batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    finally:
        model.eval()
        torch.set_num_threads(threads)


def main(argv: list[str] | None = None) -> Path:
    """CLI entry: `retro-search tiny-model OUT_DIR [--seed N ...]`; prints the directory."""
    parser = argparse.ArgumentParser(prog="retro-search tiny-model",
                                     description="Build the tiny offline test model.")
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vocab-size", type=int, default=2048)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--train-steps", type=int, default=0,
                        help="fit to the built-in corpus so it writes R1-shaped answers (~200)")
    args = parser.parse_args(argv)
    path = build_tiny_model(args.out_dir, seed=args.seed, vocab_size=args.vocab_size,
                            hidden_size=args.hidden_size, num_layers=args.num_layers,
                            train_steps=args.train_steps)
    print(path)
    return path


if __name__ == "__main__":
    main()
