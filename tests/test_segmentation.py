import json
from pathlib import Path

import pytest

from retro_search.segmentation import (
    DEFAULT_KEYWORDS,
    join_steps,
    opens_thought,
    segment,
    split_steps,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def test_steps_are_blank_line_chunks_and_empty_chunks_are_dropped():
    text = "First step.\n\nSecond\nstill second.\n\n\n\n  \n\nThird."
    assert split_steps(text) == ["First step.", "Second\nstill second.", "Third."]


def test_join_steps_inverts_split_steps_on_clean_text():
    text = "a\n\nb\nc\n\nd"
    assert join_steps(split_steps(text)) == text


@pytest.mark.parametrize("step", [
    "Wait, that is wrong.", "wait that is wrong", "  **Alternatively**, use symmetry.",
    "Hmm, let me think.", "But wait: 3 is odd.", "Let me double-check the sum.",
    "## Hold on", "> On second thought no", "- Another approach: induction",
])
def test_step_opening_with_a_keyword_opens_a_thought(step):
    assert opens_thought(step)


@pytest.mark.parametrize("step", [
    "Waiting for the sum is pointless.", "So wait is not first.", "The answer is 3.",
    "Hmmm is not the keyword.", "Alternative forms exist.",
])
def test_step_without_a_leading_keyword_continues_the_thought(step):
    assert not opens_thought(step)


def test_thoughts_and_boundaries():
    text = "Let x = 2.\n\nThen 2x = 4.\n\nWait, check.\n\nYes 4.\n\nAlternatively, 2+2.\n\nDone."
    seg = segment(text)
    assert seg.num_steps == 6
    assert seg.thought_starts == (0, 2, 4)
    assert seg.num_thoughts == 3 and seg.num_boundaries == 2
    assert seg.thoughts()[1] == ("Wait, check.", "Yes 4.")
    assert seg.prefix_length(1) == 2 and seg.prefix_length(2) == 4
    with pytest.raises(IndexError):
        seg.prefix_length(3)


def test_keyword_at_the_very_start_does_not_make_an_empty_first_thought():
    seg = segment("Wait, first.\n\nsecond\n\nWait, third.")
    assert seg.thought_starts == (0, 2)


def test_keyword_list_comes_from_the_caller():
    text = "a\n\nSo, b\n\nWait, c"
    assert segment(text, keywords=("So",)).thought_starts == (0, 1)
    assert segment(text, keywords=()).num_thoughts == 1


def test_real_r1_distill_traces_have_many_thoughts():
    path = SHARED / "traces" / "thought_anchors_r1_distill_math.jsonl"
    if not path.exists():
        pytest.skip("shared data not present")
    rows = [json.loads(line) for line in path.open()]
    thoughts = []
    for row in rows:
        reasoning = row["base_solution"]["solution"].split("</think>")[0]
        seg = segment(reasoning, DEFAULT_KEYWORDS)
        assert seg.num_steps >= seg.num_thoughts >= 1
        # every thought after the first starts with a keyword, and no other step does
        for i, step in enumerate(seg.steps):
            assert opens_thought(step) == (i in seg.thought_starts[1:]) or i == 0
        thoughts.append(seg.num_thoughts)
    # The README counts 498 "Wait" + 132 "Alternatively" + 107 "Hmm" over 40 traces: thoughts abound.
    assert sum(thoughts) > 300
    assert sum(t >= 2 for t in thoughts) >= 35
