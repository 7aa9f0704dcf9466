"""The eval progress bar moves with each finished generation, not once per engine call of up to
`eval.chunk_size` (1,024) requests, and shows the generated tokens per second."""

import tqdm.auto

from retro_search.evaluation.benchmarks import Problem
from retro_search.evaluation.config import EvalSettings
from retro_search.evaluation.generate import evaluate_benchmark
from retro_search.grading import Grader


class RecordingBar(tqdm.auto.tqdm):
    bars: list["RecordingBar"] = []

    def __init__(self, *args, **kwargs):
        kwargs["disable"] = False
        super().__init__(*args, **kwargs)
        self.updates: list[int] = []
        self.postfixes: list[str] = []
        RecordingBar.bars.append(self)

    def update(self, n=1):
        self.updates.append(n)
        return super().update(n)

    def set_postfix(self, *args, **kwargs):
        self.postfixes.append(str(kwargs))
        return super().set_postfix(*args, **kwargs)


def test_a_batch_engine_moves_the_bar_once_per_finished_generation(tiny_model_dir,
                                                                   monkeypatch):
    from retro_search.engines.transformers_engine import TransformersEngine

    monkeypatch.setattr(tqdm.auto, "tqdm", RecordingBar)
    RecordingBar.bars.clear()
    engine = TransformersEngine(tiny_model_dir, device="cpu", batch_size=4)
    problems = [Problem(str(i), f"{i} + {i} = ?", str(2 * i)) for i in range(5)]
    settings = EvalSettings(n_samples_per_benchmark={"aime24": 2}, max_tokens=6)
    assert settings.chunk_size >= 10  # all ten requests in one engine call
    with Grader(processes=0) as grader:
        rows = evaluate_benchmark("aime24", problems, engine, settings, str, grader,
                                  progress=True)
    assert len(rows) == 10
    bar = next(b for b in RecordingBar.bars if b.unit == "gen")
    assert bar.updates == [1] * 10 and bar.n == 10
    assert any("tok_s" in p for p in bar.postfixes)
    assert engine.on_result is None  # left as it was found
