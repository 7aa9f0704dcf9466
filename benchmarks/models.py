"""The benchmark models, built offline like the tiny test model and cached by their recipe.

    .venv/bin/python benchmarks/models.py tiny     # prints the model folder (~30 s to build)
    .venv/bin/python benchmarks/models.py 20m      # ~1.5-2 min to build on 2 idle cores

Sizes (`SIZES`), both Llama models with the tiny model's R1-style tokenizer (2,048 tokens):
- tiny: `build_tiny_model`'s defaults (hidden 64, 2 layers, head size 32: 2 query heads sharing
  1 key-value head; 0.34M parameters), fitted 200 steps of 16 x 256 tokens, as
  search_throughput.py builds it: it writes R1-shaped answers and closes </think>.
- 20m: hidden 512, 6 layers, 8 heads of size 64 (no grouping), MLP 1376: 21.1M parameters.
  Fitted 80 steps of 4 x 256 tokens (a step of 16 x 256 takes ~10 s on one thread, so the
  tiny model's recipe would not fit in the 2-minute budget). Its loss is ~3.6 then (the tiny
  model's ~1.5): it does not write tidy traces, but it emits blank lines, </think> and EOS at
  varied points, so rollouts end at varied lengths like real ones instead of all running to
  their budget. `logit_scale` 1: with the default 20 the first loss is ~30 and 80 steps leave
  it at ~5.
Training runs on one thread (tiny_model's rule), so a recipe gives the same weights on a machine.

Cache: `benchmarks/.cache/models/<size>-<key>/`, where the key hashes the recipe, the seed,
the steps and tiny_model.py's source (which decides the weights); a folder is written under a
temporary name and renamed when complete, so a half-built model is never picked up. The folder
also holds `bench_model.json` (recipe, parameters, build seconds).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, SRC  # noqa: E402

CACHE = REPO / "benchmarks" / ".cache" / "models"


@dataclass(frozen=True)
class Recipe:
    build: dict = field(default_factory=dict)  # build_tiny_model's size arguments
    train_steps: int = 200
    train_batch_size: int = 16  # sequences of 256 tokens per step


SIZES = {
    "tiny": Recipe(),
    "20m": Recipe(build=dict(hidden_size=512, num_layers=6, num_heads=8, num_kv_heads=8,
                             intermediate_size=1376, logit_scale=1.0),
                  train_steps=80, train_batch_size=4),
}


def bench_model(size: str, *, train_steps: int | None = None, seed: int = 0,
                cache: Path = CACHE) -> Path:
    """The folder of the `size` model (see `SIZES`), built into `cache` unless already there.
    `train_steps` overrides the recipe's."""
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; known: {sorted(SIZES)}")
    recipe = SIZES[size]
    steps = recipe.train_steps if train_steps is None else train_steps
    source = (SRC / "retro_search" / "tiny_model.py").read_bytes()
    key = hashlib.sha256(json.dumps([asdict(recipe), steps, seed], sort_keys=True).encode()
                         + source).hexdigest()[:12]
    out = Path(cache) / f"{size}-s{steps}-{key}"
    if (out / "bench_model.json").exists():
        return out
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    start = time.perf_counter()
    params = _build(partial, recipe, steps, seed)
    info = {"size": size, "recipe": asdict(recipe), "train_steps": steps, "seed": seed,
            "parameters": params, "build_s": round(time.perf_counter() - start, 1)}
    (partial / "bench_model.json").write_text(json.dumps(info, indent=1) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return out


def _build(out: Path, recipe: Recipe, steps: int, seed: int) -> int:
    """Build and fit the model into `out`; returns its parameter count."""
    from safetensors.torch import load_file

    from retro_search.tiny_model import build_tiny_model

    build_tiny_model(out, seed=seed, train_steps=steps, train_batch_size=recipe.train_batch_size,
                     **recipe.build)
    return sum(t.numel() for t in load_file(out / "model.safetensors").values())


def model_info(path: str | Path) -> dict | None:
    """The `bench_model.json` of a folder built here, or None."""
    info = Path(path) / "bench_model.json"
    return json.loads(info.read_text()) if info.exists() else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("size", choices=sorted(SIZES))
    p.add_argument("--train-steps", type=int, default=None, help="default: the recipe's")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", default=str(CACHE), help="default: %(default)s")
    args = p.parse_args(argv)
    print(bench_model(args.size, train_steps=args.train_steps, seed=args.seed,
                      cache=Path(args.cache)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
