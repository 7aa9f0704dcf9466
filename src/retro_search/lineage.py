"""Lineage of a results table: from a cell back to the raw input rows (`retro-search lineage`).

`lineage(table, cell=None)` takes an experiment's table (`results/experiments/NAME/results.md`,
or `README.md` / `index.json` in that folder) or a summary stage's `results.md` / `results.csv`,
and returns a dict (keys below, always present):

- `table`: the file read, its rows and columns, the summary stage and experiment folder (each a
  stage entry as in `chain`);
- `cells`: the cell asked for (`cell="ROW,COLUMN"`, e.g. "retro_search,arith/acc"), or every
  cell: the text shown, the full-precision value of the summary's results.csv, the value
  recomputed from the eval stages' metrics.json files with the table writer
  (`report.tables`), whether the two agree, and the (arm, benchmark) pairs it comes from (an
  average covers every benchmark of its arm, the "retro vs original" row both arms);
- `evals`: per arm its eval stage and, per benchmark, metrics.json and generations.parquet
  (path, sha256, whether a manifest of the stage records that hash, rows = problems x samples);
- `chain`: every stage the eval stage(s) were made from (without a cell: every stage behind the
  summary), walked through the manifests' `upstream` links (the union over a folder's
  manifests) down to stages with no upstream, each once, in depth-first order (`depth`): role
  (from index.json), kind, id, dir, config.yaml's hash and the values that identify the stage,
  manifests, inputs from outside the results folder, outputs (a folder of many files summarised
  by its file count and the hash of its model.safetensors), code, environment, hub models,
  engine, and the audit lines about it;
- `raw_inputs`: the data rows the chain starts from: the files with rows (.jsonl, .parquet,
  .csv) written by task, sample and prepare stages and by stages with no upstream, and the
  files read from outside the results folder, with their row counts;
- `audit`: `retro_search.audit.audit` run once on the experiment folder (else the summary stage);
- `could_not_be_verified`: every problem and unverified line of the audit, and every cell that
  does not reproduce or whose metrics could not be read, each with the stage it names;
- `exit_status`: 0 when the audit found no problems and every cell reproduces, else 1.

Manifests written before a key existed (`manifests` of an upstream entry, `code.modules`,
`environment`, `kind`) are read without it. A missing stage folder, manifest or file is named,
never a traceback. A table outside a results layout, an unknown row or column or a malformed
cell is a ValueError with one clear line (the valid rows / columns listed).

Paths in manifests are relative to the folder the workflow ran in: the parent of the results
folder, found from the table's path; the audit runs there.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from retro_search.provenance import MANIFEST_SUFFIX, sha256_file

__all__ = ["lineage", "render_json", "render_text"]

EXPERIMENT_FILES = ("results.md", "README.md", "index.json")
SUMMARY_FILES = ("results.md", "results.csv")
VERSIONED_PACKAGES = ("torch", "transformers", "vllm", "trl")
RAW_KINDS = ("task", "sample", "prepare")  # stages whose outputs are the pipeline's data rows
ROW_FILES = (".jsonl", ".parquet", ".csv")
FOLDER_FILES_LISTED = 3  # a top-level output folder with more files is summarised
# Per kind, config values that identify a stage besides model paths, revisions and seeds.
KIND_KEYS = {
    "tiny_model": ("tiny_model.miniature", "tiny_model.train_steps"),
    "sample": ("sample.questions", "sample.n", "engine.name"),
    "prepare": ("data.source", "data.format", "data.label"),
    "search": ("search.rollouts", "engine.name"),
    "sft": ("sft.num_train_epochs", "sft.max_steps", "sft.learning_rate"),
    "eval": ("eval.benchmarks", "eval.n_samples", "eval.limit", "engine.name"),
}


def _sha_of(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


# --- where the table is ------------------------------------------------------------------------

@dataclass
class _Layout:
    given: Path                   # the TABLE argument
    table: Path                   # the file whose cells are read
    base: Path                    # where the manifests' relative paths start (absolute)
    root: Path                    # the results folder (absolute)
    summary: str | None           # the summary stage folder, as manifests name it
    experiment: str | None        # the experiment folder, as manifests name it
    roles: dict[str, list[str]] = field(default_factory=dict)  # abs dir -> roles
    index_dirs: dict[str, str] = field(default_factory=dict)   # role -> dir

    def path(self, name: str | Path) -> Path:
        """A path as a manifest names it -> a path that opens from here."""
        path = Path(name)
        return path if path.is_absolute() else self.base / path

    def key(self, name: str | Path) -> str:
        return os.path.normpath(self.path(name))

    def name(self, path: str | Path) -> str:
        """A path from here -> as the manifests name it (relative to the base when inside it)."""
        relative = os.path.relpath(os.path.abspath(path), self.base)
        return Path(relative).as_posix() if not relative.startswith("..") else str(path)

    def outside(self, name: str | Path) -> bool:
        return not Path(self.key(name)).is_relative_to(os.path.normpath(self.root))


def _not_a_table(table: Path) -> ValueError:
    return ValueError(f"{table} is not a results table: give results/experiments/NAME/results.md "
                      "(or README.md / index.json there), or a summary stage's results.md / "
                      "results.csv (results/summary/ID/)")


def _locate(given: str | Path) -> _Layout:
    given = Path(given)
    if not given.exists():
        raise ValueError(f"{given} does not exist")
    folder, file = (given, None) if given.is_dir() else (given.parent, given.name)
    folder = Path(os.path.abspath(folder))
    kind_dir = folder.parent
    root = kind_dir.parent
    base = root.parent
    if kind_dir.name == "experiments" and (folder / "index.json").is_file():
        if file not in (None, *EXPERIMENT_FILES):
            raise _not_a_table(given)
        index = _read_index(folder / "index.json")
        layout = _Layout(given, folder / "results.md", base, root, None, None)
        layout.experiment = layout.name(folder)
        _take_roles(layout, index)
        layout.summary = layout.index_dirs.get("summary")
        if not layout.table.is_file():  # an index written without the table's copy
            if layout.summary is None:
                raise ValueError(f"{folder} has no results.md and its index.json names no "
                                 "summary stage")
            layout.table = layout.path(layout.summary) / "results.md"
        return layout
    if kind_dir.name == "summary" and file in (None, *SUMMARY_FILES, "summary.json"):
        table = folder / (file if file in SUMMARY_FILES else "results.md")
        layout = _Layout(given, table, base, root, None, None)
        layout.summary = layout.name(folder)
        # Roles from an experiment whose index names this summary, when there is one.
        for index_file in sorted((root / "experiments").glob("*/index.json")):
            try:
                index = _read_index(index_file)
            except ValueError:
                continue
            if any(s.get("role") == "summary" and layout.key(s.get("dir", "")) ==
                   layout.key(layout.summary) for s in index["stages"]):
                _take_roles(layout, index)
                break
        return layout
    raise _not_a_table(given)


def _read_index(path: Path) -> dict[str, Any]:
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err.msg})") from None
    if not isinstance(index, dict) or not isinstance(index.get("stages"), list):
        raise ValueError(f"{path}: not an experiment index (no stages list)")
    return index


def _take_roles(layout: _Layout, index: dict[str, Any]) -> None:
    for stage in index["stages"]:
        if "dir" in stage and "role" in stage:
            layout.roles.setdefault(layout.key(stage["dir"]), []).append(stage["role"])
            layout.index_dirs.setdefault(stage["role"], stage["dir"])


# --- the table ---------------------------------------------------------------------------------

_SEPARATOR = re.compile(r"^\|[\s:|-]+\|$")


def _split_row(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def parse_markdown_table(text: str) -> tuple[list[str], dict[str, dict[str, str]]]:
    """The first Markdown table of `text` as written by `tables.to_markdown`: its columns
    ("arith/acc", from the header "arith acc") and, per row label, column -> cell text."""
    lines = [line for line in text.splitlines()]
    start = next((i for i, line in enumerate(lines) if line.startswith("|")), None)
    if start is None:
        return [], {}
    header = _split_row(lines[start])
    columns = ["/".join(h.rsplit(" ", 1)) for h in header[1:]]
    rows: dict[str, dict[str, str]] = {}
    for line in lines[start + 1:]:
        if not line.startswith("|"):
            break
        if _SEPARATOR.match(line.strip()):
            continue
        cells = _split_row(line)
        rows[cells[0]] = dict(zip(columns, cells[1:]))
    return columns, rows


def _parse_csv(text: str) -> tuple[list[str], dict[str, dict[str, str]]]:
    reader = list(csv.reader(text.splitlines()))
    if not reader:
        return [], {}
    columns = reader[0][1:]
    return columns, {row[0]: dict(zip(columns, row[1:])) for row in reader[1:] if row}


def _read_table(path: Path) -> tuple[list[str], dict[str, dict[str, str]]]:
    if not path.is_file():
        raise ValueError(f"{path} does not exist")
    text = path.read_text(encoding="utf-8")
    columns, rows = (_parse_csv(text) if path.suffix == ".csv" else parse_markdown_table(text))
    if not columns or not rows:
        raise ValueError(f"{path} holds no results table")
    return columns, rows


def _parse_cell(spec: str, table: str, columns: list[str],
                rows: dict[str, dict[str, str]]) -> tuple[str, str]:
    parts = [part.strip() for part in spec.split(",")]
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"--cell takes ROW,COLUMN (e.g. retro_search,{columns[0]}), "
                         f"got {spec!r}")
    row, column = parts
    if column not in columns and " " in column:  # as the Markdown header writes it
        column = "/".join(column.rsplit(" ", 1))
    if row not in rows:
        raise ValueError(f"no row {row!r} in {table}; rows: {', '.join(rows)}")
    if column not in columns:
        raise ValueError(f"no column {parts[1]!r} in {table}; columns: {', '.join(columns)}")
    return row, column


def _float(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan


# --- files -------------------------------------------------------------------------------------

_ROWS: dict[str, int | None] = {}


def count_rows(path: Path) -> int | None:
    """Rows of a .jsonl (non-blank lines), .parquet (its metadata) or .csv (lines after the
    header) file; None for other files and missing ones."""
    key = os.path.abspath(path)
    if key in _ROWS:
        return _ROWS[key]
    rows = None
    if path.is_file() and path.suffix in ROW_FILES:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            try:
                rows = pq.ParquetFile(path).metadata.num_rows
            except Exception:  # noqa: BLE001 - a damaged file is the audit's to name
                rows = None
        else:
            with open(path, "rb") as fh:
                rows = sum(1 for line in fh if line.strip())
            if path.suffix == ".csv":
                rows = max(rows - 1, 0)
    _ROWS[key] = rows
    return rows


def _short(value: Any, limit: int = 4) -> Any:
    if isinstance(value, list) and len(value) > limit:
        return [*value[:limit], f"... ({len(value)} in all)"]
    return value


# --- one stage ---------------------------------------------------------------------------------

def _identifying(kind: str, config: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, value in config.items():
        if key == "input_files":
            continue
        if not isinstance(value, dict):
            values[key] = _short(value)
            continue
        if "path" in value:
            values[f"{key}.path"] = value["path"]
            values[f"{key}.revision"] = value.get("revision")
        if "seed" in value:
            values[f"{key}.seed"] = value["seed"]
    for dotted in KIND_KEYS.get(kind, ()):
        section, _, name = dotted.partition(".")
        if isinstance(config.get(section), dict) and name in config[section]:
            values[dotted] = _short(config[section][name])
    if kind == "task" and isinstance(config.get("task"), dict):
        values.update({f"task.{k}": _short(v) for k, v in config["task"].items()
                       if not isinstance(v, dict)})
    if config.get("input_files"):
        values["input_files"] = f"{len(config['input_files'])} files, hashed in config.yaml"
    return values


def _empty_node(layout: _Layout, dir_name: str) -> dict[str, Any]:
    path = Path(dir_name)
    kind = path.parent.name
    roles = layout.roles.get(layout.key(dir_name), [])
    return {"role": ", ".join(roles) or None, "kind": kind, "id": f"{kind}/{path.name}",
            "dir": dir_name, "exists": layout.path(dir_name).is_dir(), "depth": 0,
            "config": None, "manifests": [], "upstream": [], "seeds": {}, "models": {},
            "outside_inputs": [], "outputs": [], "code": [], "environment": [],
            "hub_models": [], "hub_datasets": [], "engine": [], "notes": [],
            "audit": {"problems": [], "unverified": []}}


def read_stage(layout: _Layout, dir_name: str) -> tuple[dict[str, Any], list[str]]:
    """The facts of one stage folder and the upstream folders its manifests name."""
    node = _empty_node(layout, dir_name)
    folder = layout.path(dir_name)
    if not node["exists"]:
        node["notes"].append(f"missing: stage folder {dir_name}")
        return node, []
    manifests = []
    for file in sorted(folder.glob(f"*{MANIFEST_SUFFIX}")):
        entry = {"file": file.name, "sha256": sha256_file(file), "stage": None}
        try:
            manifest = json.loads(file.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            manifest = None
        if not isinstance(manifest, dict):
            node["notes"].append(f"unreadable: {dir_name}/{file.name} is not a JSON manifest")
            node["manifests"].append(entry)
            continue
        entry["stage"] = manifest.get("stage")
        node["manifests"].append(entry)
        manifests.append(manifest)
    if not node["manifests"]:
        node["notes"].append(f"missing: {dir_name} has no manifest (never finished?)")

    config_file = folder / "config.yaml"
    if config_file.is_file():
        import yaml

        try:
            config = yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError:
            config = {}
            node["notes"].append(f"unreadable: {dir_name}/config.yaml is not YAML")
        node["config"] = {"path": layout.name(config_file), "sha256": sha256_file(config_file),
                          "values": _identifying(node["kind"], config)
                          if isinstance(config, dict) else {}}
        if node["role"] is None and node["kind"] == "eval" and isinstance(config, dict) \
                and config.get("arm"):
            node["role"] = f"eval:{config['arm']}"
    elif node["kind"] != "experiments":
        node["notes"].append(f"missing: {dir_name}/config.yaml")

    upstream: dict[str, str] = {}
    outputs: dict[str, dict[str, Any]] = {}
    outside: dict[str, dict[str, Any]] = {}
    for manifest in manifests:
        for up in manifest.get("upstream") or []:
            if isinstance(up, dict) and up.get("path"):
                upstream.setdefault(layout.key(up["path"]), up["path"])
        for entry in _entries(manifest, "outputs"):
            outputs.setdefault(layout.key(entry["path"]), entry)
        for entry in _entries(manifest, "inputs"):
            if layout.outside(entry["path"]):
                outside.setdefault(layout.key(entry["path"]), entry)
        node["seeds"].update(manifest.get("seeds") or {})
        node["models"].update(manifest.get("models") or {})
        _add_distinct(node["code"], _code(manifest))
        _add_distinct(node["environment"], _environment(manifest))
        for hub in manifest.get("hub_models") or []:
            _add_distinct(node["hub_models"], {"id": hub.get("id"),
                                               "revision": hub.get("revision"),
                                               "commit": hub.get("commit")})
        for hub in manifest.get("hub_datasets") or []:
            _add_distinct(node["hub_datasets"], {"id": hub.get("id"),
                                                 "revision": hub.get("revision"),
                                                 "commit": hub.get("commit")})
        engine = manifest.get("engine")
        if engine:
            name = engine.get("name") if isinstance(engine, dict) else str(engine)
            device = engine.get("device") if isinstance(engine, dict) else None
            _add_distinct(node["engine"], f"{name} ({device})" if device else name)
    # Files from outside named in the config but not hashed by an older manifest.
    config_values = _config_input_files(folder / "config.yaml")
    for path, digest in config_values.items():
        outside.setdefault(layout.key(path), {"path": path, "sha256": digest, "bytes": None,
                                              "note": "hash from config.yaml, not in a manifest"})
    node["upstream"] = [_stage_id(up) for up in upstream.values()]
    node["outside_inputs"] = [{**_file_entry(layout, e), **({"note": e["note"]} if "note" in e
                                                            else {})}
                              for e in outside.values()]
    node["outputs"] = _outputs(layout, dir_name, list(outputs.values()))
    return node, list(upstream.values())


def _entries(manifest: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """The file entries of a manifest's inputs or outputs (malformed ones left out)."""
    entries = manifest.get(key)
    return [e for e in entries if isinstance(e, dict) and e.get("path")] \
        if isinstance(entries, list) else []


def _stage_id(dir_name: str) -> str:
    path = Path(dir_name)
    return f"{path.parent.name}/{path.name}"


def _config_input_files(config_file: Path) -> dict[str, str]:
    if not config_file.is_file():
        return {}
    import yaml

    try:
        config = yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError:
        return {}
    files = config.get("input_files") if isinstance(config, dict) else None
    return dict(files) if isinstance(files, dict) else {}


def _add_distinct(items: list, item: Any) -> None:
    if item is not None and item not in items:
        items.append(item)


def _code(manifest: dict[str, Any]) -> dict[str, Any]:
    code = manifest.get("code") or {}
    modules = code.get("modules")
    return {"git_commit": code.get("git_commit"), "dirty": code.get("dirty"),
            "modules": len(modules) if isinstance(modules, dict) else None,
            "modules_sha256": _sha_of(modules)[:16] if isinstance(modules, dict) else None}


def _environment(manifest: dict[str, Any]) -> dict[str, Any]:
    env = manifest.get("environment") or {}
    packages = manifest.get("packages") or {}
    return {"python": env.get("python") or manifest.get("python"),
            "packages_sha256": env.get("packages_sha256"),
            "versions": {name: packages.get(name) for name in VERSIONED_PACKAGES}}


def _file_entry(layout: _Layout, entry: dict[str, Any]) -> dict[str, Any]:
    return {"path": entry["path"], "sha256": entry.get("sha256"), "bytes": entry.get("bytes"),
            "rows": count_rows(layout.path(entry["path"]))}


def _outputs(layout: _Layout, dir_name: str, entries: list[dict[str, Any]]) -> list[dict]:
    """Files one by one; a top-level folder of many files (model/, a shard folder) as one entry:
    its file count, size, and the hash of its model.safetensors when it has one."""
    stage = layout.key(dir_name)
    groups: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        relative = os.path.relpath(layout.key(entry["path"]), stage)
        parts = Path(relative).parts
        top = parts[0] if len(parts) > 1 and not relative.startswith("..") else ""
        groups.setdefault(top, []).append(entry)
    found = []
    for top, files in groups.items():
        if not top or len(files) <= FOLDER_FILES_LISTED:
            found += [_file_entry(layout, e) for e in files]
            continue
        weights = [e for e in files if Path(e["path"]).name == "model.safetensors"] or \
            [e for e in files if e["path"].endswith(".safetensors")]
        found.append({"path": f"{dir_name}/{top}/", "files": len(files),
                      "bytes": sum(e.get("bytes") or 0 for e in files),
                      "safetensors": ({"path": weights[0]["path"], "sha256": weights[0]["sha256"]}
                                      if weights else None)})
    return found


# --- the walk ----------------------------------------------------------------------------------

def walk(layout: _Layout, tops: Iterable[str]) -> list[dict[str, Any]]:
    """Every stage reached from `tops` through the manifests' upstream links, each once, in
    depth-first order (`depth`: its distance along the first path that reached it)."""
    seen: dict[str, dict[str, Any]] = {}
    order: list[dict[str, Any]] = []

    def visit(dir_name: str, depth: int) -> None:
        key = layout.key(dir_name)
        if key in seen:
            return
        node, upstream = read_stage(layout, dir_name)
        node["depth"] = depth
        seen[key] = node
        order.append(node)
        for up in upstream:
            visit(up, depth + 1)

    for top in tops:
        visit(top, 0)
    return order


def _raw_inputs(chain: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Files with rows written by the data stages (bottom of the chain first), then the files
    read from outside the results folder."""
    found: list[dict[str, Any]] = []
    written = [("output", node, e) for node in reversed(chain)
               if node["kind"] in RAW_KINDS or (node["exists"] and not node["upstream"])
               for e in node["outputs"]]
    read = [("outside", node, e) for node in reversed(chain) for e in node["outside_inputs"]]
    for how, node, entry in written + read:
        if entry.get("rows") is None or any(f["path"] == entry["path"] for f in found):
            continue
        found.append({"stage": node["id"], "role": node["role"], "how": how,
                      "path": entry["path"], "sha256": entry.get("sha256"),
                      "rows": entry["rows"]})
    return found


# --- the eval stages behind the table ----------------------------------------------------------

class _Evals:
    """Where each arm's eval stage and each (arm, benchmark)'s files are: from summary.json's
    metrics list, else the index's eval roles, else the summary manifests' upstream."""

    def __init__(self, layout: _Layout, summary_node: dict[str, Any] | None) -> None:
        self.layout = layout
        self.metrics_files: dict[tuple[str, str], str] = {}
        self.original_arm, self.retro_arm = "original", "retro_search"
        self.notes: list[str] = []
        self.dirs: dict[str, str] = {}
        summary_json = layout.path(layout.summary) / "summary.json" if layout.summary else None
        if summary_json is not None and summary_json.is_file():
            try:
                summary = json.loads(summary_json.read_text(encoding="utf-8"))
                self.original_arm = summary.get("original_arm") or self.original_arm
                self.retro_arm = summary.get("retro_arm") or self.retro_arm
                for row in summary.get("metrics") or []:
                    if row.get("metrics_file"):
                        self.metrics_files[(row["arm"], row["benchmark"])] = row["metrics_file"]
                        self.dirs.setdefault(row["arm"], _stage_dir_of(row["metrics_file"]))
            except (ValueError, AttributeError, KeyError, TypeError):
                self.notes.append(f"unreadable: {layout.name(summary_json)}")
        for role, dir_name in layout.index_dirs.items():
            if role.startswith("eval:"):
                self.dirs.setdefault(role.split(":", 1)[1], dir_name)
        for up in (summary_node or {}).get("_upstream_dirs", []):
            if Path(up).parent.name == "eval":
                config = _load_config(layout.path(up) / "config.yaml")
                if config.get("arm"):
                    self.dirs.setdefault(config["arm"], up)

    def source(self, arm: str, benchmark: str) -> dict[str, Any]:
        layout = self.layout
        entry: dict[str, Any] = {"benchmark": benchmark, "metrics": None, "generations": None,
                                 "notes": []}
        eval_dir = self.dirs.get(arm)
        metrics_name = self.metrics_files.get((arm, benchmark))
        if metrics_name is None and eval_dir is not None:
            config = _load_config(layout.path(eval_dir) / "config.yaml")
            try:
                from retro_search.pipeline import eval_benchmark_dir

                metrics_name = f"{eval_dir}/{eval_benchmark_dir(config['eval'], benchmark)}" \
                               "/metrics.json"
            except (KeyError, TypeError, ValueError):
                entry["notes"].append(f"{eval_dir}/config.yaml does not list benchmark "
                                      f"{benchmark!r}")
        if metrics_name is None:
            if eval_dir is None:
                entry["notes"].append(f"no eval stage found for arm {arm!r} (summary.json, "
                                      "index.json and the summary's manifest name none)")
            return entry
        recorded = _recorded_hashes(layout, eval_dir or _stage_dir_of(metrics_name))
        metrics_path = layout.path(metrics_name)
        entry["metrics"] = _described(layout, metrics_name, recorded)
        if metrics_path.is_file():
            from retro_search.artifacts import read_eval_metrics

            try:
                values = read_eval_metrics(metrics_path)
                entry["metrics"]["values"] = {
                    k: values.get(k) for k in ("accuracy", "accuracy_stderr", "mean_tokens",
                                               "n_problems", "n_samples", "n_generations")}
            except ValueError as err:
                entry["notes"].append(str(err))
        else:
            entry["notes"].append(f"missing: {metrics_name}")
        generations_name = f"{Path(metrics_name).parent.as_posix()}/generations.parquet"
        entry["generations"] = _described(layout, generations_name, recorded)
        entry["generations"].update(_generation_counts(layout.path(generations_name)))
        if not layout.path(generations_name).is_file():
            entry["notes"].append(f"missing: {generations_name}")
        return entry


def _stage_dir_of(file_name: str) -> str:
    """results/eval/ID/shard-0/arith/metrics.json -> results/eval/ID."""
    path = Path(file_name)
    for parent in path.parents:
        if parent.parent.name == "eval":
            return parent.as_posix()
    return path.parent.as_posix()


def _load_config(path: Path) -> dict[str, Any]:
    import yaml

    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except yaml.YAMLError:
        return {}
    return config if isinstance(config, dict) else {}


def _recorded_hashes(layout: _Layout, dir_name: str) -> dict[str, tuple[str, str]]:
    """abs path -> (sha256, manifest file) of every output the stage's manifests record."""
    found = {}
    for file in sorted(layout.path(dir_name).glob(f"*{MANIFEST_SUFFIX}")):
        try:
            manifest = json.loads(file.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            continue
        for entry in _entries(manifest, "outputs") if isinstance(manifest, dict) else []:
            found.setdefault(layout.key(entry["path"]), (entry.get("sha256"), file.name))
    return found


def _described(layout: _Layout, name: str, recorded: dict[str, tuple[str, str]]) -> dict:
    path = layout.path(name)
    digest = sha256_file(path) if path.is_file() else None
    record = recorded.get(layout.key(name))
    return {"path": name, "sha256": digest,
            "recorded_in": record[1] if record else None,
            "matches_manifest": (record[0] == digest) if record and digest else None}


def _generation_counts(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {"rows": None, "problems": None, "samples": None, "rows_are_problems_x_samples": None}
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path, columns=["problem_id", "sample"])
    except Exception:  # noqa: BLE001 - damaged or not generations: named, no traceback
        return {"rows": count_rows(path), "problems": None, "samples": None,
                "rows_are_problems_x_samples": None}
    problems = len(set(table.column("problem_id").to_pylist()))
    samples = len(set(table.column("sample").to_pylist()))
    return {"rows": table.num_rows, "problems": problems, "samples": samples,
            "rows_are_problems_x_samples": table.num_rows == problems * samples}


# --- cells -------------------------------------------------------------------------------------

def _cell_sources(row: str, column: str, benchmarks: list[str], evals: _Evals,
                  relative_row: str) -> list[tuple[str, str]]:
    bench = column.rsplit("/", 1)[0]
    benches = benchmarks if bench == "average" else [bench]
    row_arms = [evals.original_arm, evals.retro_arm] if row == relative_row else [row]
    return [(arm, b) for arm in row_arms for b in benches]


def _recompute(sources: dict[tuple[str, str], dict[str, Any]], pairs: list[tuple[str, str]],
               evals: _Evals):
    """The table `report.tables` makes of the metrics of `pairs`, or None when one is missing."""
    from retro_search.report.tables import metrics_from_eval, results_table

    rows = []
    for arm, bench in pairs:
        metrics = (sources.get((arm, bench)) or {}).get("metrics") or {}
        values = metrics.get("values")
        if values is None:
            return None
        rows.append(metrics_from_eval({**values, "benchmark": bench}, arm,
                                      source=metrics["path"]))
    return results_table(rows, arms=list(dict.fromkeys(a for a, _ in pairs)),
                         benchmarks=list(dict.fromkeys(b for _, b in pairs)),
                         original_arm=evals.original_arm, retro_arm=evals.retro_arm)


def _recomputed_cell(table, row: str, column: str, markdown: bool) -> tuple[str | None, float]:
    from retro_search.report.tables import to_markdown

    if table is None or row not in table.index or column not in table.columns:
        return None, math.nan
    value = float(table.loc[row, column])
    if not markdown:
        return repr(value), value
    _, rows = parse_markdown_table(to_markdown(table))
    return rows.get(row, {}).get(column), value


def _agrees(shown: str, recomputed: str | None, value: float, markdown: bool) -> bool:
    if recomputed is None:
        return False
    if markdown:
        return shown == recomputed
    number = _float(shown)
    if math.isnan(number) or math.isnan(value):
        return math.isnan(number) and math.isnan(value)
    return math.isclose(number, value, rel_tol=1e-9, abs_tol=1e-9)


# --- audit -------------------------------------------------------------------------------------

def _run_audit(layout: _Layout) -> dict[str, Any]:
    from retro_search.audit import audit

    target = layout.experiment or layout.summary
    here = os.path.abspath(".")
    with (contextlib.chdir(layout.base) if os.path.normpath(here) != os.path.normpath(layout.base)
          else contextlib.nullcontext()):
        report = audit(target)
    return {"target": target, "checked": len(report.checked), "problems": list(report.problems),
            "unverified": list(report.unverified), "ok": not report.problems}


def _attach(line: str, nodes: list[dict[str, Any]], layout: _Layout) -> dict[str, Any] | None:
    """The stage whose folder, id or file `line` names first."""
    best: tuple[int, int] | None = None
    found = None
    for node in nodes:
        for key in {node["dir"], layout.key(node["dir"]), node["id"]}:
            match = re.search(rf"(?<![\w./-]){re.escape(key)}(?![\w-])", line)
            if match and (best is None or (match.start(), -len(key)) < best):
                best, found = (match.start(), -len(key)), node
    return found


# --- the whole ---------------------------------------------------------------------------------

def lineage(table: str | Path, cell: str | None = None) -> dict[str, Any]:
    """The lineage of one cell (`cell="ROW,COLUMN"`) or of every cell of `table` (see the
    module docstring). Raises ValueError for a table outside a results layout, an unknown row or
    column, or a malformed cell."""
    from retro_search.report.tables import RELATIVE_ROW

    _ROWS.clear()  # row counts are cached for one call only: files change between calls
    layout = _locate(table)
    columns, rows = _read_table(layout.table)
    markdown = layout.table.suffix != ".csv"
    if cell is not None:
        wanted = [_parse_cell(cell, layout.name(layout.table), columns, rows)]
    else:
        wanted = [(row, column) for row in rows for column in columns]

    summary_node = None
    if layout.summary is not None:
        summary_node, summary_up = read_stage(layout, layout.summary)
        summary_node["_upstream_dirs"] = summary_up
    experiment_node = read_stage(layout, layout.experiment)[0] if layout.experiment else None
    evals = _Evals(layout, summary_node)

    benchmarks = list(dict.fromkeys(c.rsplit("/", 1)[0] for c in columns
                                    if c.rsplit("/", 1)[0] != "average"))
    csv_values: dict[str, dict[str, str]] = {}
    csv_file = layout.path(layout.summary) / "results.csv" if layout.summary else None
    if csv_file is not None and csv_file.is_file():
        csv_values = _parse_csv(csv_file.read_text(encoding="utf-8"))[1]

    needed = {(row, column): _cell_sources(row, column, benchmarks, evals, RELATIVE_ROW)
              for row, column in wanted}
    pairs = list(dict.fromkeys(p for ps in needed.values() for p in ps))
    sources = {pair: evals.source(*pair) for pair in pairs}
    own_problems: list[tuple[str, str | None]] = []  # (line, eval dir it is about)

    recomputed_tables: dict[tuple, Any] = {}  # one per set of sources (an arm's benchmark...)
    cells = []
    for (row, column), cell_pairs in needed.items():
        if tuple(cell_pairs) not in recomputed_tables:
            recomputed_tables[tuple(cell_pairs)] = _recompute(sources, cell_pairs, evals)
        recomputed_table = recomputed_tables[tuple(cell_pairs)]
        shown = rows[row].get(column, "")
        recomputed, value = _recomputed_cell(recomputed_table, row, column, markdown)
        reproduces = _agrees(shown, recomputed, value, markdown)
        csv_text = csv_values.get(row, {}).get(column)
        cells.append({"row": row, "column": column, "shown": shown,
                      "value": None if csv_text is None or math.isnan(_float(csv_text))
                      else _float(csv_text),
                      "recomputed": recomputed, "reproduces": reproduces,
                      "from": [f"{arm}:{bench}" for arm, bench in cell_pairs]})
        if not reproduces:
            why = ("its metrics could not be read" if recomputed_table is None
                   else f"the metrics give {recomputed!r}")
            line = (f"not reproduced: cell {row},{column} of {layout.name(layout.table)} "
                    f"shows {shown!r}; {why}")
            own_problems.append((line, evals.dirs.get(row)))

    eval_list = []
    for arm in dict.fromkeys(a for a, _ in pairs):
        eval_dir = evals.dirs.get(arm)
        entries = [sources[(a, b)] for a, b in pairs if a == arm]
        eval_list.append({"arm": arm,
                          "stage": _stage_id(eval_dir) if eval_dir else None,
                          "dir": eval_dir, "benchmarks": entries})
        for entry in entries:
            for note in entry["notes"]:
                own_problems.append((f"eval files of {arm}:{entry['benchmark']}: {note}",
                                     eval_dir))

    if cell is None:
        tops = (summary_node or {}).get("_upstream_dirs") or \
            [d for d in evals.dirs.values()]
    else:
        tops = [e["dir"] for e in eval_list if e["dir"]]
    chain = walk(layout, tops)
    if summary_node is not None:
        summary_node.pop("_upstream_dirs", None)

    audit_result = _run_audit(layout)
    nodes = [n for n in (experiment_node, summary_node) if n] + chain
    unverifiable = []
    for kind, lines in (("problem", audit_result["problems"]),
                        ("unverified", audit_result["unverified"])):
        for line in lines:
            node = _attach(line, nodes, layout)
            if node is not None:
                node["audit"]["problems" if kind == "problem" else "unverified"].append(line)
            unverifiable.append({"kind": kind, "line": line,
                                 "stage": node["id"] if node else None})
    for line, eval_dir in own_problems:
        node = next((n for n in nodes if eval_dir and layout.key(n["dir"]) ==
                     layout.key(eval_dir)), None)
        if node is not None:
            node["notes"].append(line)
        unverifiable.append({"kind": "lineage", "line": line,
                             "stage": node["id"] if node else None})

    return {
        "table": {"path": layout.name(layout.given), "read": layout.name(layout.table),
                  "sha256": sha256_file(layout.table), "format": "md" if markdown else "csv",
                  "base": str(layout.base), "rows": list(rows), "columns": columns,
                  "experiment": experiment_node, "summary": summary_node},
        "cell": cell,
        "cells": cells,
        "evals": eval_list,
        "chain": chain,
        "raw_inputs": _raw_inputs(chain),
        "audit": audit_result,
        "could_not_be_verified": unverifiable,
        "exit_status": 0 if audit_result["ok"] and not own_problems else 1,
    }


# --- rendering ---------------------------------------------------------------------------------

def render_json(result: dict[str, Any]) -> str:
    from retro_search.artifacts import json_safe

    return json.dumps(json_safe(result), indent=2, ensure_ascii=False, allow_nan=False,
                      default=str) + "\n"


def _h(digest: str | None) -> str:
    return digest[:12] if digest else "none"


def _size(size: int | None) -> str:
    if size is None:
        return "size unknown"
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return ""


def _rows_text(rows: int) -> str:
    return f"{rows} row" if rows == 1 else f"{rows} rows"


def _in(path: str, folder: str | None) -> str:
    """`path` from inside `folder` when it lies there (the folder is on the line above)."""
    if folder and path.startswith(folder.rstrip("/") + "/"):
        return path[len(folder.rstrip("/")) + 1:]
    return path


def _file_line(entry: dict[str, Any], folder: str | None = None) -> str:
    if "files" in entry:
        weights = entry.get("safetensors")
        extra = (f", {_in(weights['path'], entry['path'])} sha256 {_h(weights['sha256'])}"
                 if weights else "")
        return (f"{_in(entry['path'], folder)}: {entry['files']} files, "
                f"{_size(entry['bytes'])}{extra}")
    rows = f", {_rows_text(entry['rows'])}" if entry.get("rows") is not None else ""
    note = f" ({entry['note']})" if entry.get("note") else ""
    return f"{_in(entry['path'], folder)} sha256 {_h(entry.get('sha256'))}{rows}{note}"


def _value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return str(value)


def _stage_lines(node: dict[str, Any], indent: str) -> list[str]:
    title = f"{node['role']}  {node['id']}" if node["role"] else node["id"]
    out = [f"{indent}- {title}"]
    fact = indent + "    "
    out.append(f"{fact}dir: {node['dir']}{'' if node['exists'] else ' (MISSING)'}")
    if node["config"]:
        out.append(f"{fact}config: {_in(node['config']['path'], node['dir'])} sha256 "
                   f"{_h(node['config']['sha256'])}")
        for key, value in node["config"]["values"].items():
            out.append(f"{fact}config {key} = {_value(value)}")
    if node["seeds"]:
        out.append(f"{fact}seeds: " + ", ".join(f"{k}={v}" for k, v in node["seeds"].items()))
    for manifest in node["manifests"]:
        stage = f" ({manifest['stage']})" if manifest["stage"] else ""
        out.append(f"{fact}manifest: {manifest['file']}{stage} sha256 {_h(manifest['sha256'])}")
    if node["upstream"]:
        out.append(f"{fact}made from: {', '.join(node['upstream'])}")
    elif node["exists"] and node["manifests"]:
        out.append(f"{fact}made from: nothing in the pipeline (a bottom stage)")
    for entry in node["outside_inputs"]:
        out.append(f"{fact}input from outside the results: {_file_line(entry)}")
    for entry in node["outputs"]:
        out.append(f"{fact}output: {_file_line(entry, node['dir'])}")
    for code in node["code"]:
        modules = (f"{code['modules']} modules, sha256 of their hashes {code['modules_sha256']}"
                   if code["modules"] is not None else "module hashes not recorded")
        dirty = {True: " (dirty)", False: " (clean)"}.get(code["dirty"], "")
        out.append(f"{fact}code: git {(code['git_commit'] or 'unknown')[:12]}{dirty}, {modules}")
    for env in node["environment"]:
        versions = ", ".join(f"{k} {v or 'absent'}" for k, v in env["versions"].items())
        out.append(f"{fact}environment: python {env['python'] or 'unknown'}, packages_sha256 "
                   f"{_h(env['packages_sha256']) if env['packages_sha256'] else 'not recorded'}"
                   f"; {versions}")
    for hub in node["hub_models"]:
        out.append(f"{fact}hub model: {hub['id']} revision {hub['revision'] or 'main'} commit "
                   f"{hub['commit'] or 'NOT RECORDED'}")
    for hub in node["hub_datasets"]:
        out.append(f"{fact}hub dataset: {hub['id']} revision {hub['revision'] or 'latest'} "
                   f"commit {hub['commit'] or 'NOT RECORDED'}")
    for engine in node["engine"]:
        out.append(f"{fact}engine: {engine}")
    for note in node["notes"]:
        out.append(f"{fact}! {note}")
    for line in node["audit"]["problems"]:
        out.append(f"{fact}audit problem: {line}")
    for line in node["audit"]["unverified"]:
        out.append(f"{fact}audit unverified: {line}")
    return out


def _source_lines(entry: dict[str, Any], indent: str) -> list[str]:
    out = []
    bench = entry["benchmark"]
    metrics, generations = entry["metrics"], entry["generations"]
    if metrics:
        recorded = ("as recorded in " + metrics["recorded_in"] if metrics["matches_manifest"]
                    else "DIFFERS from " + metrics["recorded_in"] if metrics["recorded_in"]
                    else "in no manifest")
        out.append(f"{indent}{bench} metrics: {metrics['path']} sha256 {_h(metrics['sha256'])}"
                   f" ({recorded})")
        values = metrics.get("values")
        if values:
            out.append(f"{indent}{bench} metrics values: " + ", ".join(
                f"{k} {v}" for k, v in values.items() if v is not None))
    if generations:
        counts = ""
        if generations.get("rows") is not None:
            counts = f", {generations['rows']} rows"
            if generations.get("problems") is not None:
                sign = "=" if generations["rows_are_problems_x_samples"] else "!="
                counts += (f" {sign} {generations['problems']} problems x "
                           f"{generations['samples']} samples")
        recorded = ("as recorded in " + generations["recorded_in"]
                    if generations["matches_manifest"]
                    else "DIFFERS from " + generations["recorded_in"]
                    if generations["recorded_in"] else "in no manifest")
        out.append(f"{indent}{bench} generations: {generations['path']} sha256 "
                   f"{_h(generations['sha256'])}{counts} ({recorded})")
    for note in entry["notes"]:
        out.append(f"{indent}! {note}")
    return out


def _cell_line(cell: dict[str, Any], indent: str) -> str:
    value = f" (results.csv: {cell['value']:.6g})" if cell["value"] is not None else ""
    verdict = ("reproduced from the metrics" if cell["reproduces"]
               else f"NOT reproduced: the metrics give {cell['recomputed']!r}"
               if cell["recomputed"] is not None else "NOT reproduced: metrics missing")
    return f"{indent}{cell['column']} = {cell['shown']}{value}: {verdict}"


def render_text(result: dict[str, Any]) -> str:
    table = result["table"]
    out = [f"lineage of {table['path']}" + (f", cell {result['cell']}" if result["cell"] else ""),
           f"  table read: {table['read']} sha256 {_h(table['sha256'])}",
           f"  rows: {', '.join(table['rows'])}",
           f"  columns: {', '.join(table['columns'])}"]
    for node in (table["experiment"], table["summary"]):
        if node:
            out += _stage_lines(node, "  ")

    cells_by_row: dict[str, list[dict[str, Any]]] = {}
    for cell in result["cells"]:
        cells_by_row.setdefault(cell["row"], []).append(cell)
    evals = {e["arm"]: e for e in result["evals"]}
    out.append("")
    out.append("cells:" if result["cell"] is None else "cell:")
    for row, cells in cells_by_row.items():
        if row in evals:
            stage = evals[row]["stage"] or "NO EVAL STAGE FOUND"
            out.append(f"  arm {row} -> {stage}")
        else:
            out.append(f"  row {row} (from {', '.join(dict.fromkeys(cells[0]['from']))})")
        for cell in cells:
            out.append(_cell_line(cell, "    "))
        if row in evals:
            for entry in evals[row]["benchmarks"]:
                out += _source_lines(entry, "    ")
    for arm, entry in evals.items():  # arms a cell comes from but whose row is not shown
        if arm not in cells_by_row:
            out.append(f"  arm {arm} -> {entry['stage'] or 'NO EVAL STAGE FOUND'}")
            for source in entry["benchmarks"]:
                out += _source_lines(source, "    ")

    out.append("")
    out.append(f"chain ({len(result['chain'])} stages, each once, under the first stage made "
               "from it):")
    for node in result["chain"]:
        out += _stage_lines(node, "  " + "  " * node["depth"])

    out.append("")
    out.append("raw input rows (where the chain starts):")
    for entry in result["raw_inputs"]:
        how = "read from outside by" if entry["how"] == "outside" else "written by"
        out.append(f"  {entry['path']}: {_rows_text(entry['rows'])}, sha256 {_h(entry['sha256'])} "
                   f"({how} {entry['role'] or entry['stage']})")
    if not result["raw_inputs"]:
        out.append("  none found")

    audit_result = result["audit"]
    out.append("")
    out.append(f"audit of {audit_result['target']}: {audit_result['checked']} manifests checked, "
               f"{len(audit_result['problems'])} problems, "
               f"{len(audit_result['unverified'])} unverified")
    out.append("could not be verified:")
    for item in result["could_not_be_verified"]:
        where = f" [{item['stage']}]" if item["stage"] else " [outside this chain]"
        out.append(f"  {item['kind']}: {item['line']}{where}")
    if not result["could_not_be_verified"]:
        out.append("  nothing: every manifest, file and cell checked out")
    out.append(f"-> {'OK' if result['exit_status'] == 0 else 'FAILED'}")
    return "\n".join(out) + "\n"
