"""`retro-search sample`: a model's own responses to questions with reference answers (one shard).

Settings: the `sample`, `model` and `engine` sections of --config (a sample stage's resolved
config), then KEY=VALUE overrides. The work is `retro_search.stages.sample.run`; heavy
imports stay inside the command.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

DESCRIPTION = """\
Sample a model on questions with reference answers: n responses per question (sample.n), in the
model's own format (its chat template, its reasoning opener, then what it writes: reasoning, the
closer, a solution). Writes OUTPUT, one JSON line per response in the `samples` trace preset
(id "<question id>/<sample>", question_id, sample, position, problem, answer, response, model,
seed, finish_reason, num_tokens, question_metadata), the input of `retro-search prepare`, which
grades the responses and keeps the correct ones. Responses that reach sample.max_tokens are kept
and counted (prepare drops those that never closed their reasoning). Bad question records (no
question, an answer the grader cannot read, a repeated id) go to the quarantine file with their
reason (sample.on_bad_record=quarantine) or stop the command (error).

With sample.num_shards=N and --shard i, the command answers the questions at positions i, i+N,
... of the source. Every response is appended to a hidden progress file beside OUTPUT
(.OUTPUT.progress-<fingerprint>.jsonl, keyed by the settings and the questions); a killed run
started again skips what it holds, and OUTPUT is written atomically at the end. Each response's
seed derives from sample.seed, the question id and the sample index, so with the transformers
engine a resumed run writes the same file as an uninterrupted one.

Engine faults: a request that fails is sent again with the same seed (sample.retries more tries,
default 2); one that runs past its time limit (sample.request_timeout_s, default null: 600 s +
0.5 s per token of its max_tokens; 0: no limit) is given up; a sample given up is a row with an
"error" (prepare drops it), counted in the summary and named in the warnings. When more than
sample.max_failed_share (default 0.5) of the samples fail, the command writes no OUTPUT, says
why in one line and exits with status 1; the progress file keeps what finished, and running it
again generates only the rest."""

EPILOG = """\
Settings (each with its default at the end of this help):
  sample.questions (hub id or local file; or --questions), sample.format (question preset
  problem_answer | math_solution | gsm8k, a trace preset such as r1_response, or
  {question: PATH, answer: PATH, id: PATH}), sample.split, sample.name, sample.limit, sample.n,
  sample.temperature, sample.top_p, sample.max_tokens, sample.seed, sample.num_shards,
  sample.on_bad_record, sample.retries, sample.request_timeout_s, sample.max_failed_share;
  model.path, model.tokenizer, model.user_template, model.think_open,
  model.think_close; engine.name (transformers | vllm | auto | package.module:Class) and its
  arguments. Example:
  retro-search sample --questions DigitalLearningGmbH/MATH-lighteval --output samples.jsonl \\
      sample.format=math_solution sample.name=default sample.n=4 sample.limit=100 \\
      model.path=deepseek-ai/DeepSeek-R1-Distill-Qwen-7B engine.name=vllm"""

SECTIONS = ("sample", "model", "engine")


def load_sample_config(config_file: str | Path | None, overrides: Sequence[str] = (),
                       questions: str | None = None):
    """(SampleSettings, sampler model section, engine section): --config's sample/model/engine
    sections over the defaults, then overrides, then --questions. The sampler is
    `sample.model` when set, else the `model` section. Raises ValueError naming a bad key."""
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    from retro_search.config import default_config, load_config_file
    from retro_search.sampling import check_sampler, sample_settings

    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ValueError(f"override {bad[0]!r} is not KEY=VALUE (e.g. sample.n=4)")
    others = [o for o in overrides if o.split(".", 1)[0] not in SECTIONS]
    if others:
        raise ValueError(f"override(s) {others} belong to none of the sections {list(SECTIONS)} "
                         "(write sample.KEY=VALUE, model.KEY=VALUE or engine.KEY=VALUE)")
    try:
        cfg = OmegaConf.create({"sample": {}, "model": default_config().model,
                                "engine": {"name": "transformers"}})
        if config_file is not None:
            loaded = load_config_file(config_file)
            cfg = OmegaConf.merge(cfg, {k: loaded[k] for k in SECTIONS
                                        if k in loaded and loaded[k] is not None})
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
        if questions is not None:
            cfg.sample.questions = questions
        sampler_given = cfg.sample.get("model") is not None
        resolved = OmegaConf.to_container(cfg, resolve=True,
                                          throw_on_missing=not sampler_given)
    except MissingMandatoryValue as err:
        raise ValueError(f"config value {err.full_key} is required (set it with "
                         f"{err.full_key}=...)") from None
    except OmegaConfBaseException as err:
        raise ValueError(f"invalid sample config: {err}") from None
    settings = sample_settings(resolved["sample"], "sample")
    defaults = OmegaConf.to_container(default_config().model)
    defaults.pop("path")
    if settings.model is not None:
        model, where = {**defaults, **settings.model}, "sample.model"
    else:
        model, where = resolved["model"], "model"
    check_sampler(model, where)
    return settings, model, resolved["engine"]


def cmd_sample(args: argparse.Namespace) -> int:
    from retro_search.stages import sample

    settings, model, engine_section = load_sample_config(args.config, args.overrides,
                                                         args.questions)
    output = Path(args.output)
    quarantine = Path(args.quarantine or output.with_suffix(".quarantine.jsonl"))
    # The manifest hashes a local question file and records the sampler (see _write_manifest).
    args.quarantine, args.model_path = str(quarantine), model["path"]
    args.questions_file = settings.questions if Path(settings.questions).exists() else None
    result = sample.run(settings, model, engine_section, shard=args.shard, output=output,
                        quarantine=quarantine, chunk_size=args.chunk_size,
                        show_progress=not args.no_progress)
    args.engine_info = result.engine  # the manifest says which engine ran
    return result.report(args.command)


def register(sub) -> None:
    p = sub.add_parser("sample", help="sample a model's own traces for questions with answers",
                       description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", required=True, help="the samples (.jsonl)")
    p.add_argument("--questions", default=None,
                   help="questions: hub dataset id or local .jsonl/.json/.parquet file, folder "
                        "or glob (default: sample.questions)")
    p.add_argument("--config", default=None,
                   help="YAML with sample/model/engine sections (a sample stage's resolved config)")
    p.add_argument("--shard", type=int, default=0,
                   help="which of sample.num_shards shards of the questions to answer (default: 0)")
    p.add_argument("--quarantine", default=None,
                   help="bad question records (default: OUTPUT with .quarantine.jsonl)")
    p.add_argument("--chunk-size", type=int, default=256,
                   help="requests per engine call for batch engines, one progress save each "
                        "(default: 256; streaming engines such as vLLM take requests one by one)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="sample.KEY=VALUE, model.KEY=VALUE or engine.KEY=VALUE overrides")
    p.set_defaults(func=cmd_sample, input_args=("questions_file",), model_args=("model_path",),
                   output_args=("output", "quarantine"))
