"""The report's "Tuning" table: per row, the values `clbench tune` chose and what choosing them cost.

Read from each cell's `config.tuning` (stored by `clbench bench --tuned`), so the
cost of tuning is shown next to the results it produced (docs/tuning.md).
"""

from __future__ import annotations

from typing import Any


def tuning_rows(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (scenario, label) whose cells were run with tuned values, in cell order."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for cell in cells:
        record = (cell.get("config") or {}).get("tuning") or {}
        if record.get("role") != "tuned":
            continue
        rows.setdefault((cell["scenario"], cell["label"]), record)
    return [{"scenario": s, "label": label, **record} for (s, label), record in rows.items()]


def tuning_markdown(cells: list[dict[str, Any]]) -> str:
    rows = tuning_rows(cells)
    if not rows:
        return ""
    lines = ["## Tuning\n", "| scenario | row | tuned values | protocol | trials | CPU-s spent tuning |",
             "| :--- | :--- | :--- | :--- | ---: | ---: |"]
    for r in rows:
        values = ", ".join(f"{k}={_fmt(v)}" for k, v in r["values"].items())
        protocol = r["protocol"] + (f" (k={r['k']})" if r.get("k") is not None else "")
        lines.append(f"| {r['scenario']} | {r['label']} | {values} | {protocol} | {r['trials']} | "
                     f"{r['cpu_seconds']:.0f} |")
    seeds = sorted({tuple(r["seeds"]) for r in rows})
    lines.append(f"\nTuned on seed(s) {', '.join(map(str, seeds))}, disjoint from the evaluation seeds; "
                 "trials counts every trial of the row's budget (completed, pruned and failed).\n")
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
