"""LaTeX writer: booktabs tables in a document that compiles as it is.

`summary.tex` is a complete `article` document (packages: booktabs, graphicx),
so `pdflatex summary.tex` works unchanged; each table sits between
`% --- begin table <scenario>` / `% --- end table` comments to copy into a paper.
Every piece of text goes through `escape`, so names like `split_mnist` are safe.
"""

from __future__ import annotations

from clbench.report.display import Cell, DisplayTable

_SPECIALS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    # In the default OT1 font encoding "<" and ">" print as inverted marks.
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "|": r"\textbar{}",
    "Δ": r"$\Delta$",  # the comparison columns' headers
}
ARROWS = {"high": r" $\uparrow$", "low": r" $\downarrow$", None: ""}


def escape(text: str) -> str:
    """Escape LaTeX special characters in plain text.

    Non-ASCII characters become "?": pdflatex stops on characters its fonts lack,
    and a table that does not compile is worse than one odd character.
    """
    return "".join(_SPECIALS.get(ch, ch if ch.isascii() else "?") for ch in str(text))


def _cell(cell: Cell) -> str:
    text = escape(cell.text) + (rf" $\pm$ {escape(cell.spread)}" if cell.spread else "")
    return rf"\textbf{{{text}}}" if cell.bold else text


def latex_table(table: DisplayTable, number: int) -> str:
    spec = "".join("r" if c.numeric else "l" for c in table.columns)
    header = " & ".join(escape(c.header) + ARROWS[c.better] for c in table.columns)
    body = [" & ".join(_cell(c) for c in row) + r" \\" for row in table.rows]
    return "\n".join(
        [
            f"% --- begin table {escape(table.title)}",
            r"\begin{table}[htbp]",
            r"\centering",
            r"\scriptsize",
            rf"\caption{{{escape(table.title)}. {escape(table.caption)}}}",
            rf"\label{{tab:clbench-{number}}}",
            r"\resizebox{\textwidth}{!}{%",
            rf"\begin{{tabular}}{{{spec}}}",
            r"\toprule",
            header + r" \\",
            r"\midrule",
            *body,
            r"\bottomrule",
            r"\end{tabular}}",
            r"\end{table}",
            "% --- end table",
        ]
    )


def render_latex(run_name: str, tables: list[DisplayTable], skipped_lines: list[str]) -> str:
    parts = [
        r"\documentclass{article}",
        r"\usepackage{booktabs}",
        r"\usepackage{graphicx}",
        r"\begin{document}",
        rf"\section*{{clbench report: {escape(run_name)}}}",
    ]
    parts += [latex_table(t, i) for i, t in enumerate(tables, start=1)]
    if skipped_lines:
        parts.append(r"\paragraph{Not used in the tables.}")
        parts.append(r"\begin{itemize}")
        parts += [rf"\item {escape(line)}" for line in skipped_lines]
        parts.append(r"\end{itemize}")
    parts.append(r"\end{document}")
    return "\n".join(parts) + "\n"
