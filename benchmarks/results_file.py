"""Write a benchmark script's block into benchmarks/RESULTS.md, between its own markers,
keeping the prose around it (shared by memory.py and vs_avalanche.py; scripts run from
benchmarks/, so `import results_file` finds this file)."""

from __future__ import annotations

from pathlib import Path


def replace_section(path: Path, section: str, begin: str, end: str, body: str) -> None:
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    block = f"{begin}\n{body.strip()}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    elif section in text:  # a hand-written section without markers: put the block under its heading
        text = text.replace(f"{section}\n", f"{section}\n\n{block}\n", 1)
    else:
        text = text.rstrip() + f"\n\n{section}\n\n{block}\n"
    path.write_text(text)
