"""`report.html`: one self-contained page (inline CSS, base64 PNGs, no scripts).

It opens from disk in any browser with no server and no network access, so it
can be mailed or attached to an issue as a single file.
"""

from __future__ import annotations

import base64
from html import escape

from clbench.report.display import Cell, DisplayTable
from clbench.report.plots import Plot

ARROWS = {"high": " ↑", "low": " ↓", None: ""}

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1400px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
caption { caption-side: bottom; text-align: left; font-size: 0.85em; color: #444;
          padding-top: 0.5em; max-width: 1200px; }
th, td { padding: 0.3em 0.7em; border-bottom: 1px solid #ddd; }
thead th { border-bottom: 2px solid #333; border-top: 2px solid #333; }
tbody tr:last-child td { border-bottom: 2px solid #333; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.num { white-space: nowrap; }
td.text, th.text { text-align: left; }
figure { margin: 1em 0; }
.figures { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
.figures figure { flex: 1 1 600px; max-width: 100%; margin: 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.85em; color: #555; }
.problems li { font-family: ui-monospace, monospace; font-size: 0.85em; }
"""


def _cell(cell: Cell, numeric: bool) -> str:
    text = escape(cell.text) + (f" ± {escape(cell.spread)}" if cell.spread else "")
    if cell.bold:
        text = f"<strong>{text}</strong>"
    return f'<td class="{"num" if numeric else "text"}">{text}</td>'


def html_table(table: DisplayTable, number: int, table_class: str = "summary") -> str:
    head = "".join(
        f'<th class="{"num" if c.numeric else "text"}">{escape(c.header)}{ARROWS[c.better]}</th>'
        for c in table.columns
    )
    body = "\n".join(
        "<tr>"
        + "".join(_cell(cell, col.numeric) for cell, col in zip(row, table.columns, strict=True))
        + "</tr>"
        for row in table.rows
    )
    return (
        f'<table class="{table_class}" id="{escape(table.anchor)}">\n'
        f"<caption>Table {number}. {escape(table.caption)}</caption>\n"
        f"<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"
    )


def _figure(plot: Plot) -> str:
    data = base64.b64encode(plot.png).decode("ascii")
    return (
        f'<figure><img alt="{escape(plot.title)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{escape(plot.title)}</figcaption></figure>"
    )


def _list(title: str, items: list[str]) -> str:
    if not items:
        return ""
    lis = "\n".join(f"<li>{escape(item)}</li>" for item in items)
    return f'<h2>{escape(title)} ({len(items)})</h2>\n<ul class="problems">\n{lis}\n</ul>'


def render_html(
    title: str,
    intro: str,
    sections: list[tuple[DisplayTable, list[Plot]]],
    lists: list[tuple[str, list[str]]],
    compare: list[DisplayTable] = (),
) -> str:
    """The page: intro, one section per scenario (table + figures), comparison, problems."""
    parts = [f"<h1>{escape(title)}</h1>", f"<p>{escape(intro)}</p>"]
    number = 0
    for table, plots in sections:
        number += 1
        parts.append(f"<section><h2>{escape(table.title)}</h2>")
        parts.append(html_table(table, number))
        big = [p for p in plots if p.kind == "heatmaps"]
        parts += [_figure(p) for p in big]
        small = [_figure(p) for p in plots if p.kind != "heatmaps"]
        if small:
            parts.append('<div class="figures">' + "\n".join(small) + "</div>")
        parts.append("</section>")
    if compare:
        parts.append("<section><h2>Comparison of runs</h2>")
        for table in compare:
            number += 1
            parts.append(f"<h3>{escape(table.title)}</h3>")
            parts.append(html_table(table, number, table_class="compare"))
        parts.append("</section>")
    parts += [_list(name, items) for name, items in lists]
    body = "\n".join(p for p in parts if p)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{escape(title)}</title>\n<style>{CSS}</style>\n</head>\n"
        f"<body>\n{body}\n</body>\n</html>\n"
    )
