"""Rollout prompts in the revision model's own format (ALGORITHM.md, "Prompts and lengths").

A rollout prompt is the model's chat template applied to the question (one user turn, generation
prompt on), then its reasoning opener (`<think>\\n` for R1-style models; not added twice when the
template already ends with it, as R1-distill templates do), then the prefix steps joined by
"\\n\\n", then "\\n\\n". The model continues from there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from retro_search.segmentation import STEP_SEPARATOR, join_steps


@dataclass(frozen=True)
class PromptFormat:
    """How the revision model sees a question and a partial trace.

    `render_question` maps a question to the chat-templated text up to the start of the assistant's
    reasoning (generation prompt included). `count_tokens` counts tokens of a text with the same
    tokenizer (no special tokens added): the unit of every search statistic.
    """

    render_question: Callable[[str], str]
    count_tokens: Callable[[str], int]
    think_open: str = "<think>\n"
    think_close: str = "</think>"

    def head(self, question: str) -> str:
        text = self.render_question(question)
        opener = self.think_open.strip()
        if opener and text.rstrip().endswith(opener):
            # The template already opened the reasoning; keep exactly one newline after it.
            return text.rstrip() + "\n"
        return text + self.think_open

    def rollout_prompt(self, head: str, prefix_steps: Sequence[str]) -> str:
        if not prefix_steps:
            return head
        return head + join_steps(prefix_steps) + STEP_SEPARATOR

    def response_text(self, reasoning: str, solution: str) -> str:
        """A whole assistant response as the model writes it: reasoning, closer, solution."""
        return f"{reasoning}\n{self.think_close}\n\n{solution}"

    def response_tokens(self, reasoning: str, solution: str) -> int:
        return self.count_tokens(self.response_text(reasoning, solution))


def tokenizer_source(path: str, tokenizer: str | None = None,
                     revision: str | None = None) -> tuple[str, str | None]:
    """Where the tokenizer of the model at `path` (pinned to hub `revision`, None: the latest) is
    read from: (the tokenizer's path, its revision). The model's own tokenizer is read at the
    model's revision; a separate `tokenizer` is another repository with commits of its own, read
    at its latest (the engines and the sft_data stage apply the same rule)."""
    return (tokenizer, None) if tokenizer else (path, revision)


def load_prompt_format(tokenizer_path: str, *, system_prompt: str | None = None,
                       user_template: str = "{question}", think_open: str = "<think>\n",
                       think_close: str = "</think>", revision: str | None = None,
                       **tokenizer_kwargs: Any) -> PromptFormat:
    """A PromptFormat from a Hugging Face tokenizer (local folder or hub id) and its chat template.

    `user_template` wraps the question (e.g. "{question}\\nPlease reason step by step, and put
    your final answer within \\\\boxed{{}}."), `system_prompt` adds a system turn when given.
    `revision`: the hub commit, branch or tag the tokenizer is read at (None: the latest), so that
    the prompts of a pinned model are those of its commit (see `tokenizer_source`).
    """
    from transformers import AutoTokenizer  # lazy: keeps `import retro_search` light

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path, revision=revision, **tokenizer_kwargs)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"tokenizer {tokenizer_path!r} has no chat template; the revision model "
                         "must be a chat model (set model.tokenizer to one that has a template)")

    def render_question(question: str) -> str:
        # replace(), not format(): templates hold LaTeX braces such as \\boxed{}
        messages = [{"role": "user", "content": user_template.replace("{question}", question)}]
        if system_prompt:
            messages.insert(0, {"role": "system", "content": system_prompt})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def count_tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    check_closer_decodes(tokenizer, think_close, tokenizer_path)
    return PromptFormat(render_question, count_tokens, think_open, think_close)


def check_closer_decodes(tokenizer: Any, think_close: str, name: str = "the tokenizer") -> None:
    """Raise ValueError unless `think_close` survives encoding and decoding with
    `skip_special_tokens=True`, as both built-in engines decode generated text. A closer that is a
    special token would vanish from every output, and every rollout and evaluation sample would
    count as unclosed; better to stop before any generation."""
    if not think_close:
        return
    ids = tokenizer(think_close, add_special_tokens=False)["input_ids"]
    decoded = tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    if think_close not in decoded:
        raise ValueError(
            f"the reasoning closer {think_close!r} does not survive decoding with {name!r}: it is "
            f"a special token, and generated text is decoded without special tokens (it comes "
            f"back as {decoded!r}), so every output would look unclosed. Use a tokenizer in which "
            "the closer is a normal added token (special=False), as in DeepSeek-R1-Distill "
            "tokenizers (model.tokenizer=...), or set think_close to text the model writes")
