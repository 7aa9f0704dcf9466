"""The miniature of the paper: a task a laptop can learn, teacher traces with the flaws
Retro-Search removes, and the small model the demo trains on them (data/miniature/README.md).

The task: sums of three one-digit numbers, "What is 3 + 5 + 2?", answers checked exactly. A sound
teacher trace adds left to right, one step per addition, then states the answer:

    <think>
    3 + 5 = 8.

    8 + 2 = 10.

    So the answer is 10.
    </think>

    The answer is \\boxed{10}.

and carries, at controlled rates, the two habits the paper targets (all arithmetic stays correct;
the flaws cost length, not accuracy):

- under-thinking (`detour_rate`): after the first addition, an "Alternatively, ..." step drops the
  sound line for another order and comes back ("Alternatively, 5 + 2 = 7 first. No, back to 8.");
- over-thinking (`verify_rate`, up to `max_verifications`): after the last addition, when the
  answer is already clear, redundant checks that open with "Wait", "Let me verify" or "Hmm".

Every flaw is one step that opens a thought (`segmentation`), and the step after it is one the
sound trace has too, so a rollout from the boundary before a flaw, with the keywords banned, can
go straight on ("8 + 2 = 10." or "So the answer is 10.") and close the reasoning: Retro-Search can
cut every flaw. That is why the sound line ends with its own answer step: the reasoning closes
with "\n</think>" (`PromptFormat.response_text`), never right after a blank line, so after the
last addition a rollout needs a step that is not a check to write, and "So the answer is N." is it.

Nothing here reads or writes files except `write_dataset` and `build_miniature_model`, which are
asked to. The files, the rates and the measured learning curves: data/miniature/README.md.
"""

from __future__ import annotations

import argparse
import itertools
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

from retro_search.segmentation import join_steps, opens_thought, split_steps

SPLITS = ("teacher", "sample", "heldout")
DETOUR_KEYWORD = "Alternatively"
# Redundant checks after the answer is clear; {chain}: every addition of the sound line restated.
VERIFICATIONS = (
    "Wait, let me double-check: {chain}.",
    "Let me verify: {expression} = {total}.",
    "Hmm, {last}. Yes.",
)
DETOUR = DETOUR_KEYWORD + ", {b} + {c} = {bc} first. No, back to {first}."


@dataclass(frozen=True)
class TaskConfig:
    """The task family, its splits and the teacher's flaw rates (defaults: the demo's)."""

    operands: int = 3              # numbers to add (3 or more)
    max_operand: int = 9           # each number in 0..max_operand
    seed: int = 0                  # splits and teacher traces
    heldout: int = 400             # evaluation questions (never trained on)
    sample: int = 200              # questions the trained model samples its own traces on
    teacher: int = 400             # questions with teacher traces
    traces_per_question: int = 4   # teacher traces per teacher question (flaws drawn anew)
    verify_rate: float = 0.6       # P(another redundant check), per check, up to the maximum
    max_verifications: int = 3
    detour_rate: float = 0.4       # P(an "Alternatively" detour after the first addition)

    def __post_init__(self):
        if self.operands < 3:
            raise ValueError(f"operands={self.operands}: the detour needs at least 3 numbers")
        for name in ("verify_rate", "detour_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be a probability in [0, 1]")
        total = (self.max_operand + 1) ** self.operands
        if self.heldout + self.sample + self.teacher > total:
            raise ValueError(f"heldout + sample + teacher = "
                             f"{self.heldout + self.sample + self.teacher} questions, but the task "
                             f"has only {total} ({self.operands} numbers in 0..{self.max_operand})")

    def expected_verifications(self) -> float:
        """Mean redundant checks per teacher trace: sum of verify_rate^j, j = 1..max."""
        return sum(self.verify_rate ** j for j in range(1, self.max_verifications + 1))


@dataclass(frozen=True)
class Problem:
    """One question; `answer` is the exact sum as a string (the gold for `grading.grade`)."""

    id: str
    question: str
    answer: str

    @property
    def numbers(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.id.split("-")[1:])


def problem(numbers: Sequence[int]) -> Problem:
    return Problem(id="add-" + "-".join(map(str, numbers)),
                   question=f"What is {' + '.join(map(str, numbers))}?", answer=str(sum(numbers)))


def splits(config: TaskConfig = TaskConfig()) -> dict[str, list[Problem]]:
    """Disjoint splits of the task's questions, the same for the same config: every tuple of
    numbers in a seeded order, cut into heldout, sample and teacher (in that order)."""
    tuples = list(itertools.product(range(config.max_operand + 1), repeat=config.operands))
    random.Random(config.seed).shuffle(tuples)
    out, start = {}, 0
    for name, size in (("heldout", config.heldout), ("sample", config.sample),
                       ("teacher", config.teacher)):
        out[name] = [problem(t) for t in tuples[start:start + size]]
        start += size
    return {name: out[name] for name in SPLITS}


@dataclass(frozen=True)
class TeacherTrace:
    """A teacher trace: reasoning steps (no markers), solution, and the flaws it was given."""

    id: str
    problem: Problem
    steps: tuple[str, ...]
    solution: str
    verifications: int
    detour: bool

    @property
    def reasoning(self) -> str:
        return join_steps(self.steps)

    def response(self) -> str:
        """The R1-format response (`<think>` reasoning `</think>` solution)."""
        return response_text(self.reasoning, self.solution)

    def raw_record(self) -> dict:
        """The record in the `r1_response` layout, with the flaws it was given."""
        return {"id": self.id, "problem": self.problem.question, "answer": self.problem.answer,
                "response": self.response(),
                "flaws": {"verifications": self.verifications, "detour": self.detour}}


def response_text(reasoning: str, solution: str) -> str:
    return f"<think>\n{reasoning}\n</think>\n\n{solution}"


def sound_steps(p: Problem) -> list[str]:
    """The flawless line: one step per addition, left to right, then the answer."""
    numbers = p.numbers
    steps, total = [], numbers[0]
    for n in numbers[1:]:
        steps.append(f"{total} + {n} = {total + n}.")
        total += n
    return steps + [f"So the answer is {total}."]


def teacher_trace(p: Problem, index: int, config: TaskConfig = TaskConfig()) -> TeacherTrace:
    """Teacher trace number `index` of problem `p`; its flaws are drawn from a generator seeded
    by (config.seed, trace id), so a trace does not depend on which others are generated."""
    trace_id = f"{p.id}-t{index}"
    rng = random.Random(f"{config.seed}/{trace_id}")
    numbers = p.numbers
    sound = sound_steps(p)
    additions, conclusion = sound[:-1], sound[-1]
    detour = rng.random() < config.detour_rate
    verifications = 0
    while verifications < config.max_verifications and rng.random() < config.verify_rate:
        verifications += 1
    steps = list(additions[:1])
    if detour:
        b, c = numbers[1], numbers[2]
        steps.append(DETOUR.format(b=b, c=c, bc=b + c, first=numbers[0] + b))
    steps += additions[1:]
    for _ in range(verifications):
        steps.append(rng.choice(VERIFICATIONS).format(
            chain=", ".join(s.rstrip(".") for s in additions),
            expression=" + ".join(map(str, numbers)), total=p.answer,
            last=additions[-1].rstrip(".")))
    steps.append(conclusion)
    return TeacherTrace(id=trace_id, problem=p, steps=tuple(steps),
                        solution=f"The answer is \\boxed{{{p.answer}}}.",
                        verifications=verifications, detour=detour)


def teacher_traces(config: TaskConfig = TaskConfig()) -> list[TeacherTrace]:
    """`traces_per_question` traces for every teacher question, question by question."""
    return [teacher_trace(p, i, config) for p in splits(config)["teacher"]
            for i in range(config.traces_per_question)]


@dataclass(frozen=True)
class Flaws:
    """The flaw steps of a reasoning text, found by segmentation: every step that opens a thought
    is one; "Alternatively" ones are detours (under-thinking), the others verifications."""

    detours: int
    verifications: int

    @property
    def total(self) -> int:
        return self.detours + self.verifications


def count_flaws(reasoning: str) -> Flaws:
    steps = split_steps(reasoning)[1:]  # the first step starts the first thought, never a switch
    switches = [s for s in steps if opens_thought(s)]
    detours = sum(s.lstrip().startswith(DETOUR_KEYWORD) for s in switches)
    return Flaws(detours=detours, verifications=len(switches) - detours)


def without_flaws(reasoning: str) -> str:
    """The reasoning with every step that opens a thought (after the first step) removed."""
    steps = split_steps(reasoning)
    return join_steps(steps[:1] + [s for s in steps[1:] if not opens_thought(s)])


# ----------------------------------------------------------------------------- the model

# Candidate sizes (measured in data/miniature/README.md). Head size 64: vLLM's CPU attention
# takes 32 and 64, not 16.
MODEL_SIZES: dict[str, dict[str, int]] = {
    "xs": dict(hidden_size=128, num_layers=4, num_heads=2, num_kv_heads=2, intermediate_size=384),
    "s": dict(hidden_size=192, num_layers=6, num_heads=3, num_kv_heads=3, intermediate_size=512),
}
DEFAULT_SIZE = "xs"
CONTEXT_TOKENS = 2048  # the longest teacher response is under 200 tokens
# Llama-3 / Qwen2-style pre-tokenisation, except that every digit stands alone (as in Qwen2):
# words and punctuation may merge ("So", " answer", ".\n\n"), digits never do.
_SPLIT_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def miniature_tokenizer(kind: str = "digits"):
    """The demo model's tokenizer: `tiny_model`'s special tokens, `<think>`/`</think>` markers
    (added, not special) and chat template, over a byte-level BPE where no token holds two digits.

    - "digits" (the default): BPE trained on the miniature's own text (every question, and teacher
      traces with every flaw template), digits split before merging. Words merge into tokens, so
      a trace is about half as many tokens as in characters, and the model learns the arithmetic
      several times faster (data/miniature/README.md).
    - "char": no merges at all, one token per byte.

    The transition keywords (`segmentation.DEFAULT_KEYWORDS`) are whole tokens in both: the search
    bans them while the model writes the first step after a boundary, and a word spelt in pieces
    can only be banned at its last piece, after the model has committed to the first ones
    ("Alternativel" then anything but "y"); as one token it is banned at the decision itself, as
    "Wait" or "Alternatively" are in real R1 tokenizers. A keyword is split off wherever it occurs,
    also inside a longer word ("Waiting" is "Wait" + "ing").
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from retro_search.segmentation import DEFAULT_KEYWORDS
    from retro_search.tiny_model import (ASSISTANT, BOS, CHAT_TEMPLATE, EOS, PAD, THINK_CLOSE,
                                         THINK_OPEN, USER)

    specials = [BOS, EOS, PAD, USER, ASSISTANT]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    if kind == "char":
        tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(specials + alphabet)},
                                   merges=[]))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    elif kind == "digits":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        # A fixed corpus (not the configured rates): every template appears, so every word merges.
        every_flaw = TaskConfig(verify_rate=1.0, detour_rate=1.0, traces_per_question=1)
        corpus = [p.question for part in splits(every_flaw).values() for p in part]
        corpus += [f"{t.reasoning}\n\n{t.solution}" for t in teacher_traces(every_flaw)]
        tok.train_from_iterator(corpus, trainer=trainers.BpeTrainer(
            vocab_size=1024, special_tokens=specials, initial_alphabet=alphabet,
            show_progress=False))
    else:
        raise ValueError(f"tokenizer kind {kind!r}: use 'digits' or 'char'")
    tok.decoder = decoders.ByteLevel()
    # Not special, so they survive decode(..., skip_special_tokens=True), as in R1-distill.
    tok.add_tokens([AddedToken(t, special=False, normalized=False)
                    for t in [THINK_OPEN, THINK_CLOSE, *DEFAULT_KEYWORDS]])
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
        additional_special_tokens=[USER, ASSISTANT], clean_up_tokenization_spaces=False)
    hf_tok.chat_template = CHAT_TEMPLATE
    return hf_tok


def build_miniature_model(out_dir: str | Path, *, seed: int = 0, size: str = DEFAULT_SIZE,
                          tokenizer: str = "digits") -> Path:
    """Write the demo's untrained reasoning model: a Llama of `MODEL_SIZES[size]` with
    `miniature_tokenizer(tokenizer)`, standard random initialisation (no logit scaling), float32,
    weights fixed by `seed`. Offline, a few seconds."""
    from retro_search.tiny_model import build_tiny_model

    if size not in MODEL_SIZES:
        raise ValueError(f"size={size!r}: known sizes {sorted(MODEL_SIZES)}")
    return build_tiny_model(out_dir, seed=seed, tokenizer=miniature_tokenizer(tokenizer),
                            logit_scale=1.0, max_position_embeddings=CONTEXT_TOKENS,
                            **MODEL_SIZES[size])


# ----------------------------------------------------------------------------- files

DATASET_FILES = {"teacher_traces": "teacher_traces.jsonl", "teacher": "teacher.jsonl",
                 "sample": "sample.jsonl", "heldout": "heldout.jsonl", "task": "task.json"}


def write_dataset(out: str | Path | Mapping[str, str | Path],
                  config: TaskConfig = TaskConfig()) -> dict[str, Path]:
    """Write the task's files and return their paths, by name (DATASET_FILES: their file names
    in a folder `out`; or `out` maps each name to its path):

    - `teacher_traces`: teacher traces in the `r1_response` layout
      ({id, problem, answer, response, flaws});
    - `teacher`, `sample`, `heldout`: the splits' questions {id, question, answer};
    - `task`: the config that made them (JSON).
    """
    from retro_search.artifacts import write_json, write_jsonl

    if isinstance(out, Mapping):
        paths = {name: Path(out[name]) for name in DATASET_FILES}
    else:
        paths = {name: Path(out) / file for name, file in DATASET_FILES.items()}
    write_jsonl(paths["teacher_traces"], (t.raw_record() for t in teacher_traces(config)))
    for name, problems in splits(config).items():
        write_jsonl(paths[name], (asdict(p) for p in problems))
    write_json(paths["task"], asdict(config))
    return paths


def main(argv: list[str] | None = None) -> int:
    """`python -m retro_search.miniature data OUT_DIR` | `model OUT_DIR [--size S --seed N]`."""
    parser = argparse.ArgumentParser(prog="python -m retro_search.miniature",
                                     description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    data = sub.add_parser("data", help="write the splits and the teacher traces")
    data.add_argument("out_dir")
    data.add_argument("--seed", type=int, default=TaskConfig.seed)
    model = sub.add_parser("model", help="write the untrained model and its tokenizer")
    model.add_argument("out_dir")
    model.add_argument("--size", default=DEFAULT_SIZE, choices=sorted(MODEL_SIZES))
    model.add_argument("--seed", type=int, default=0)
    model.add_argument("--tokenizer", default="digits", choices=["digits", "char"])
    args = parser.parse_args(argv)
    if args.command == "data":
        for name, path in write_dataset(args.out_dir, TaskConfig(seed=args.seed)).items():
            print(f"{name}: {path}")
    else:
        print(build_miniature_model(args.out_dir, seed=args.seed, size=args.size,
                                    tokenizer=args.tokenizer))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
