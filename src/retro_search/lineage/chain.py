"""The stages behind a table: what one stage folder records (config.yaml, manifests, outputs,
inputs from outside the results folder, code, environment, hub models, engine), the walk through
the manifests' `upstream` links, and the data rows the chain starts from.

Manifests written before a key existed (`manifests` of an upstream entry, `code.modules`,
`environment`, `kind`) are read without it, and a missing or unreadable folder, manifest or
config is a note on the stage, never a traceback: the audit names what is wrong, lineage shows
where it sits in the chain.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

import yaml

from retro_search.artifacts import read_json
from retro_search.lineage.layout import Layout, stage_id
from retro_search.provenance import MANIFEST_SUFFIX, freeze_sha256, sha256_file

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


# --- files -------------------------------------------------------------------------------------

def count_rows(path: Path) -> int | None:
    """Rows of a .jsonl (non-blank lines), .parquet (its metadata) or .csv (lines after the
    header) file; None for other files and missing ones. Lines are counted, not parsed: a
    damaged file is the audit's to name."""
    if not (path.is_file() and path.suffix in ROW_FILES):
        return None
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(path).metadata.num_rows
        except Exception:  # noqa: BLE001 - a damaged file is the audit's to name
            return None
    with open(path, "rb") as fh:
        rows = sum(1 for line in fh if line.strip())
    return max(rows - 1, 0) if path.suffix == ".csv" else rows


def read_manifests(folder: Path) -> list[tuple[Path, dict[str, Any] | None]]:
    """Each manifest of a stage folder with its content (None when it is not a JSON object)."""
    found = []
    for file in sorted(folder.glob(f"*{MANIFEST_SUFFIX}")):
        try:
            manifest = read_json(file)
        except ValueError:  # not JSON, or not UTF-8
            manifest = None
        found.append((file, manifest if isinstance(manifest, dict) else None))
    return found


def load_config(path: Path) -> dict[str, Any] | None:
    """A stage's config.yaml as written ({} when absent or not a mapping, None when it is not
    YAML). Read with plain YAML, runtime.yaml not merged: it is the file the stage's hash and
    the audit cover."""
    if not path.is_file():
        return {}
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        return None
    return config if isinstance(config, dict) else {}


def manifest_entries(manifest: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """The file entries of a manifest's inputs or outputs (malformed ones left out)."""
    entries = manifest.get(key)
    return [e for e in entries if isinstance(e, dict) and e.get("path")] \
        if isinstance(entries, list) else []


# --- one stage ---------------------------------------------------------------------------------

def _short(value: Any, limit: int = 4) -> Any:
    if isinstance(value, list) and len(value) > limit:
        return [*value[:limit], f"... ({len(value)} in all)"]
    return value


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


def _empty_node(layout: Layout, dir_name: str) -> dict[str, Any]:
    roles = layout.roles.get(layout.key(dir_name), [])
    return {"role": ", ".join(roles) or None, "kind": Path(dir_name).parent.name,
            "id": stage_id(dir_name), "dir": dir_name, "exists": layout.path(dir_name).is_dir(),
            "depth": 0, "config": None, "manifests": [], "upstream": [], "seeds": {},
            "models": {}, "outside_inputs": [], "outputs": [], "code": [], "environment": [],
            "hub_models": [], "hub_datasets": [], "engine": [], "notes": [],
            "audit": {"problems": [], "unverified": []}}


def read_stage(layout: Layout, dir_name: str) -> tuple[dict[str, Any], list[str]]:
    """The facts of one stage folder, and the upstream folders its manifests name (the union
    over its manifests: an eval stage has one per shard job)."""
    node = _empty_node(layout, dir_name)
    folder = layout.path(dir_name)
    if not node["exists"]:
        node["notes"].append(f"missing: stage folder {dir_name}")
        return node, []
    manifests = []
    for file, manifest in read_manifests(folder):
        entry = {"file": file.name, "sha256": sha256_file(file), "stage": None}
        node["manifests"].append(entry)
        if manifest is None:
            node["notes"].append(f"unreadable: {dir_name}/{file.name} is not a JSON manifest")
            continue
        entry["stage"] = manifest.get("stage")
        manifests.append(manifest)
    if not node["manifests"]:
        node["notes"].append(f"missing: {dir_name} has no manifest (never finished?)")

    config_file = folder / "config.yaml"
    config = load_config(config_file)
    if config is None:
        config = {}
        node["notes"].append(f"unreadable: {dir_name}/config.yaml is not YAML")
    if config_file.is_file():
        node["config"] = {"path": layout.name(config_file), "sha256": sha256_file(config_file),
                          "values": _identifying(node["kind"], config)}
        if node["role"] is None and node["kind"] == "eval" and config.get("arm"):
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
        for entry in manifest_entries(manifest, "outputs"):
            outputs.setdefault(layout.key(entry["path"]), entry)
        for entry in manifest_entries(manifest, "inputs"):
            if layout.outside(entry["path"]):
                outside.setdefault(layout.key(entry["path"]), entry)
        node["seeds"].update(manifest.get("seeds") or {})
        node["models"].update(manifest.get("models") or {})
        _add_distinct(node["code"], _code(manifest))
        _add_distinct(node["environment"], _environment(manifest))
        for kind in ("models", "datasets"):
            for hub in manifest.get(f"hub_{kind}") or []:
                _add_distinct(node[f"hub_{kind}"], {"id": hub.get("id"),
                                                    "revision": hub.get("revision"),
                                                    "commit": hub.get("commit")})
        engine = manifest.get("engine")
        if engine:
            name = engine.get("name") if isinstance(engine, dict) else str(engine)
            device = engine.get("device") if isinstance(engine, dict) else None
            _add_distinct(node["engine"], f"{name} ({device})" if device else name)
    # Files from outside named in the config but not hashed by an older manifest.
    input_files = config.get("input_files")
    for path, digest in (input_files.items() if isinstance(input_files, dict) else ()):
        outside.setdefault(layout.key(path), {"path": path, "sha256": digest, "bytes": None,
                                              "note": "hash from config.yaml, not in a manifest"})
    node["upstream"] = [stage_id(up) for up in upstream.values()]
    node["outside_inputs"] = [{**_file_entry(layout, e), **({"note": e["note"]} if "note" in e
                                                            else {})}
                              for e in outside.values()]
    node["outputs"] = _outputs(layout, dir_name, list(outputs.values()))
    return node, list(upstream.values())


def _add_distinct(items: list, item: Any) -> None:
    if item is not None and item not in items:
        items.append(item)


def _code(manifest: dict[str, Any]) -> dict[str, Any]:
    code = manifest.get("code") or {}
    modules = code.get("modules")
    # One short digest of the module hashes, by the formula provenance gives a package freeze.
    return {"git_commit": code.get("git_commit"), "dirty": code.get("dirty"),
            "modules": len(modules) if isinstance(modules, dict) else None,
            "modules_sha256": freeze_sha256(modules)[:16] if isinstance(modules, dict) else None}


def _environment(manifest: dict[str, Any]) -> dict[str, Any]:
    env = manifest.get("environment") or {}
    packages = manifest.get("packages") or {}
    return {"python": env.get("python") or manifest.get("python"),
            "packages_sha256": env.get("packages_sha256"),
            "versions": {name: packages.get(name) for name in VERSIONED_PACKAGES}}


def _file_entry(layout: Layout, entry: dict[str, Any]) -> dict[str, Any]:
    return {"path": entry["path"], "sha256": entry.get("sha256"), "bytes": entry.get("bytes"),
            "rows": count_rows(layout.path(entry["path"]))}


def _outputs(layout: Layout, dir_name: str, entries: list[dict[str, Any]]) -> list[dict]:
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

def walk(layout: Layout, tops: Iterable[str]) -> list[dict[str, Any]]:
    """Every stage reached from `tops` through the manifests' upstream links, each once, in
    depth-first order (`depth`: its distance along the first path that reached it)."""
    seen: set[str] = set()
    order: list[dict[str, Any]] = []

    def visit(dir_name: str, depth: int) -> None:
        key = layout.key(dir_name)
        if key in seen:
            return
        node, upstream = read_stage(layout, dir_name)
        node["depth"] = depth
        seen.add(key)
        order.append(node)
        for up in upstream:
            visit(up, depth + 1)

    for top in tops:
        visit(top, 0)
    return order


def raw_inputs(chain: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Files with rows written by the data stages and by stages with no upstream (bottom of the
    chain first), then the files read from outside the results folder; each file once."""
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
