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


def add_tuning_columns(frame, cells: list[dict[str, Any]]):
    """summary.csv: `tuned_values` (JSON), `tuning_protocol`, `tuning_trials` and `tuning_cpu_seconds`
    per (scenario, label), when some rows were tuned (untuned runs keep their columns unchanged)."""
    import json

    rows = tuning_rows(cells)
    if not rows or frame.empty:
        return frame
    by_row = {(r["scenario"], r["label"]): r for r in rows}

    def column(get):
        keys = zip(frame["scenario"], frame["label"], strict=True)
        return [get(by_row[key]) if key in by_row else None for key in keys]

    frame = frame.copy()
    frame["tuned_values"] = column(lambda r: json.dumps(r["values"], sort_keys=True))
    frame["tuning_protocol"] = column(lambda r: r["protocol"] + (f":k={r['k']}" if r.get("k") is not None else ""))
    frame["tuning_trials"] = column(lambda r: r["trials"])
    frame["tuning_cpu_seconds"] = column(lambda r: r["cpu_seconds"])
    return frame
