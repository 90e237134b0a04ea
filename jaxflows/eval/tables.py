"""``jaxflows table NAME``: renders ``experiments/results/NAME.json`` as a Markdown table.

A results file has top-level provenance (``command``, ``git_commit``, ``machine``, optional
``protocol``/``notes``) and a list ``rows`` of dicts. Scalar fields become columns in order of
first appearance; lists and dicts (per-epoch curves) are left to the JSON.
"""

from __future__ import annotations

import json
import os

from jaxflows.errors import UserError

DEFAULT_RESULTS_DIR = os.path.join("experiments", "results")


def default_results_dir() -> str:
    """``experiments/results`` under the current directory, else that of the repository this
    package was installed from (an editable install or a clone), else the relative path."""
    if os.path.isdir(DEFAULT_RESULTS_DIR):
        return DEFAULT_RESULTS_DIR
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    here = os.path.join(repo, DEFAULT_RESULTS_DIR)
    return here if os.path.isdir(here) else DEFAULT_RESULTS_DIR


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) >= 1 else f"{value:.4f}"
    return str(value)


def render_rows(rows: list[dict], columns: list[str] | None = None) -> str:
    """A Markdown table of ``rows`` (scalar fields only unless ``columns`` is given)."""
    if columns is None:
        columns = []
        for row in rows:
            for k, v in row.items():
                if k not in columns and not isinstance(v, (list, dict)):
                    columns.append(k)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def render_table(name: str, results_dir: str | None = None, rows_key: str = "rows") -> str:
    """Markdown for one results file: provenance lines, then the table of ``results[rows_key]``
    (``rows`` by default; another list of dicts, e.g. a per-task summary, when given)."""
    path = os.path.join(results_dir or default_results_dir(), f"{name}.json")
    if not os.path.exists(path):
        known = sorted(f[:-5] for f in os.listdir(os.path.dirname(path) or ".")
                       if f.endswith(".json")) if os.path.isdir(os.path.dirname(path)) else []
        raise UserError(f"no results file {path}",
                        hint=f"known: {', '.join(known)}" if known else "run the experiment")
    with open(path) as f:
        results = json.load(f)
    out = [f"### {results.get('title', name)}", ""]
    for key in ("protocol", "command", "git_commit", "machine", "notes"):
        if key in results:
            value = results[key]
            value = f"`{value}`" if key == "command" else value
            out.append(f"- **{key}**: {value}")
    if rows_key not in results:
        lists = [k for k, v in results.items() if isinstance(v, list)]
        raise UserError(f"{path} has no {rows_key!r} list", hint=f"lists: {', '.join(lists)}")
    columns = results.get("columns") if rows_key == "rows" else None
    out += ["", render_rows(results[rows_key], columns)]
    return "\n".join(out)
