"""A lineage result as JSON (`--json`, every key) or as text for a reader: one block per stage,
file hashes cut to 12 characters, paths inside a stage folder given from it."""

from __future__ import annotations

import json
from typing import Any

from retro_search.artifacts import json_safe


def render_json(result: dict[str, Any]) -> str:
    """Every key of the result; NaN as null, as artifacts.write_json writes it."""
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
