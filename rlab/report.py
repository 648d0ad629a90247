"""Reports: the Markdown a command writes (report.md) as one HTML page a browser opens (index.html).

The Markdown is the lab's small subset -- headings, pipe tables, images on
lines of their own, paragraphs, **bold** -- so the page needs no converter library and
no script; images keep their paths relative to the page.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

from rlab.runs import atomic_write_text

STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
         "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
         "td:first-child,th:first-child{text-align:left}img{max-width:100%;margin:0.5em 0}")


def markdown_to_html(md: str, title: str) -> str:
    """The report's Markdown subset as one self-contained HTML page."""
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
           f"<style>{STYLE}</style></head><body>"]
    table: list[list[str]] = []

    def inline(text: str) -> str:  # escaped, with **bold**
        return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(text))

    def flush_table() -> None:
        if table:
            head, *body = table
            out.append("<table><tr>" + "".join(f"<th>{inline(c)}</th>" for c in head) + "</tr>")
            out.extend("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in row) + "</tr>" for row in body)
            out.append("</table>")
            table.clear()

    for line in md.split("\n"):
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if not all(set(c) <= {"-", ":"} for c in cells):
                table.append(cells)
            continue
        flush_table()
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{html.escape(line[level:].strip())}</h{level}>")
        elif line.startswith("![") and "](" in line:
            alt, src = line[2:].split("](", 1)
            out.append(f"<p><img src='{html.escape(src.rstrip(')'))}' alt='{html.escape(alt)}'></p>")
        elif line.strip():
            out.append(f"<p>{inline(line)}</p>")
    flush_table()
    out.append("</body></html>")
    return "\n".join(out)


def write_html_report(folder: str | Path, title: str) -> Path:
    """`folder/report.md` as `folder/index.html`; returns the page."""
    folder = Path(folder)
    page = folder / "index.html"
    atomic_write_text(page, markdown_to_html((folder / "report.md").read_text(), title))
    return page
