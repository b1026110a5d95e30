"""The static HTML leaderboard: one self-contained page (inline CSS and script, plots embedded as data
URIs), so it opens from disk or any static host with nothing fetched from the network.

Clicking a column header sorts the table by it (numbers by value, missing values last); the page works
without the script too, in the order the report wrote.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cascadevsr.reports.tables import Table, best_cells, cell_texts

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { padding: 0.3em 0.8em; border-bottom: 1px solid #ddd; }
th { border-bottom: 2px solid #444; cursor: pointer; user-select: none; white-space: nowrap; }
th.sorted-asc::after { content: " \\25B4"; } th.sorted-desc::after { content: " \\25BE"; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.best { font-weight: bold; }
tr:hover td { background: #f4f6fa; }
.note { color: #555; max-width: 60em; }
ul.protocol { font-size: 0.9em; color: #333; }
img { max-width: 100%; }
"""

# Sorting: each cell carries its number in data-value; missing values sort last either way.
SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var asc = !th.classList.contains("sorted-asc");
      table.querySelectorAll("th").forEach(function (h) { h.classList.remove("sorted-asc", "sorted-desc"); });
      th.classList.add(asc ? "sorted-asc" : "sorted-desc");
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[col].dataset.value, y = b.cells[col].dataset.value;
        if (x === undefined || y === undefined) {
          x = a.cells[col].textContent; y = b.cells[col].textContent;
          return asc ? x.localeCompare(y) : y.localeCompare(x);
        }
        if (x === "") return 1;
        if (y === "") return -1;
        return asc ? x - y : y - x;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


@dataclass
class Section:
    """A part of the page: a heading, optional tables, paragraphs, list items and PNG images."""

    heading: str
    tables: list[Table] = field(default_factory=list)
    paragraphs: list[str] = field(default_factory=list)
    items: list[str] = field(default_factory=list)
    images: list[Path] = field(default_factory=list)


def html_table(table: Table) -> str:
    """One ``<table class="sortable">`` with best cells bold and the notes below it."""
    texts, best = cell_texts(table), best_cells(table)
    esc = html.escape
    head = [f"<th>{esc(k)}</th>" for k in table.keys]
    for col in table.columns:
        tip = {True: "higher is better", False: "lower is better", None: "direction unknown"}[col.higher_is_better]
        head.append(f'<th title="{tip}">{esc(f"{col.name} {col.arrow}".rstrip())}</th>')
    body = []
    for r, label in enumerate(table.labels):
        cells = [f"<td>{esc(x)}</td>" for x in label]
        for c in range(len(table.columns)):
            v = table.values[r, c]
            value = repr(float(v)) if np.isfinite(v) else ""
            cls = "num best" if best[r, c] else "num"
            text = esc(texts[r][c] + table.marks.get((r, c), ""))
            cells.append(f'<td class="{cls}" data-value="{value}">{text}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    notes = f'<p class="note">{esc(" ".join(table.notes))}</p>' if table.notes else ""
    return (f'<p><b>{esc(table.title)}</b></p>\n<table class="sortable">\n<thead><tr>{"".join(head)}</tr></thead>\n'
            f'<tbody>\n' + "\n".join(body) + "\n</tbody>\n</table>\n" + notes)


def _image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<p><img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}"></p>'


def page(title: str, sections: list[Section]) -> str:
    """The whole leaderboard page."""
    esc = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             f"<title>{esc(title)}</title>", f"<style>{STYLE}</style>", "</head>", "<body>", f"<h1>{esc(title)}</h1>"]
    for s in sections:
        parts.append(f"<h2>{esc(s.heading)}</h2>")
        parts += [f"<p>{esc(p)}</p>" for p in s.paragraphs]
        parts += [html_table(t) for t in s.tables]
        if s.items:
            parts.append('<ul class="protocol">' + "".join(f"<li>{esc(i)}</li>" for i in s.items) + "</ul>")
        parts += [_image(p) for p in s.images]
    parts += [f"<script>{SCRIPT}</script>", "</body>", "</html>"]
    return "\n".join(parts) + "\n"
