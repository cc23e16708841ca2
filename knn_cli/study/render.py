"""The report as data (sections of text, tables and figures), and that data written out twice:
as Markdown beside the figures' PNG files, and as one self-contained HTML page.

Both are rendered from the same blocks, so the two can never disagree on a number. The HTML page
needs nothing but itself -- styles inline, figures as data URIs -- so it can be mailed, archived
or opened offline, and it has a print stylesheet so that it also prints as a document.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass

from knn_cli.formatting import markdown_table
from knn_cli.plots import DPI

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NOT_RUN = "not run"  # what the report says of anything a study has not done (yet)
# Figures are shown in proportion to the size they were drawn in inches, so that their lettering
# reads at about one size (a little above a CSS inch of 96 px: a figure's 9-point legend should
# read like the page's text); a narrower window scales them down.
CSS_DPI = 120


@dataclass(frozen=True)
class Text:
    text: str  # `backticks` mark file names and values
    style: str = ""  # "" | "warning" | "note"


@dataclass(frozen=True)
class Table:
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    caption: str = ""


@dataclass(frozen=True)
class Figure:
    file: str  # relative to the study folder, for the Markdown
    caption: str
    png: bytes  # embedded in the HTML


Block = Text | Table | Figure


@dataclass(frozen=True)
class Section:
    title: str
    anchor: str
    blocks: tuple[Block, ...]


@dataclass(frozen=True)
class Document:
    title: str
    preface: tuple[Block, ...]
    sections: tuple[Section, ...]


# -- Markdown -------------------------------------------------------------------------------------


def render_markdown(doc: Document) -> str:
    parts = [f"# {doc.title}\n", *(_md_block(b) for b in doc.preface)]
    for section in doc.sections:
        parts.append(f"## {section.title}\n")
        parts += [_md_block(block) for block in section.blocks]
    return "\n".join(parts)


def _md_block(block: Block) -> str:
    if isinstance(block, Text):
        if block.style == "warning":
            return f"> **{block.text}**\n"
        return f"{block.text}\n"
    if isinstance(block, Table):
        caption = f"{block.caption}\n\n" if block.caption else ""
        rows = [[_md_cell(cell) for cell in row] for row in block.rows]
        return caption + markdown_table(block.headers, rows)
    return f"![{block.caption}]({block.file})\n\n*{block.caption}*\n"


def _md_cell(cell: str) -> str:
    return cell.replace("|", "\\|")


# -- HTML -----------------------------------------------------------------------------------------

STYLE = """
:root { color-scheme: light; }
body { margin: 0; background: #fff; color: #1f2328;
  font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
main { max-width: 1120px; margin: 0 auto; padding: 1.5rem 2rem 4rem; }
h1 { font-size: 1.75rem; line-height: 1.25; margin: 0.5rem 0 1rem; }
h2 { font-size: 1.35rem; margin: 2.5rem 0 0.75rem; padding-bottom: 0.25rem;
  border-bottom: 1px solid #d0d7de; }
p { margin: 0.6rem 0; max-width: 52rem; }
code { font: 0.9em ui-monospace, "DejaVu Sans Mono", monospace; background: #f3f4f6;
  padding: 0.05rem 0.3rem; border-radius: 3px; overflow-wrap: anywhere; }
p.warning { max-width: none; background: #fff4d6; border-left: 6px solid #d4a000;
  padding: 0.75rem 1rem; font-weight: 600; }
p.note { color: #57606a; font-size: 0.93rem; }
nav { background: #f6f8fa; border: 1px solid #d0d7de; border-radius: 6px;
  padding: 0.5rem 1rem; margin: 1rem 0; }
nav ul { margin: 0.25rem 0; padding: 0; list-style: none; columns: 2; }
nav a { color: #0550ae; text-decoration: none; }
.table { overflow-x: auto; margin: 0.75rem 0 1.25rem; }
.caption { font-weight: 600; margin: 1rem 0 0.25rem; }
table { border-collapse: collapse; font-size: 0.9rem; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d0d7de; padding: 0.3rem 0.6rem; text-align: left;
  vertical-align: top; }
th { background: #f6f8fa; font-weight: 600; }
tbody tr:nth-child(even) td { background: #fbfbfc; }
td.num { text-align: right; white-space: nowrap; }
td.nowrap { white-space: nowrap; }
td.inside, td.outside, td.spread { min-width: 9rem; }
td.inside, tbody tr:nth-child(even) td.inside { background: #e6f4ea; color: #135c2a; }
td.spread, tbody tr:nth-child(even) td.spread { background: #fff8c5; color: #5c4a00; }
td.outside, tbody tr:nth-child(even) td.outside { background: #fdecd8; color: #7a3e00; }
td.muted { color: #6e7781; font-style: italic; }
figure { margin: 1.25rem 0 1.75rem; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid #eaeef2; }
figcaption { color: #57606a; font-size: 0.9rem; margin-top: 0.35rem; }
@media print {
  @page { size: A4; margin: 14mm 12mm; }
  body { font-size: 10pt; }
  main { max-width: none; padding: 0; }
  nav { display: none; }
  h2 { break-after: avoid; margin-top: 1.5rem; }
  .caption { break-after: avoid; }
  figure, tr, p.warning { break-inside: avoid; }
  figure img { max-height: 125mm; width: auto; border: none; }
  table { font-size: 8pt; }
  th, td { padding: 0.15rem 0.35rem; }
  td.nowrap { white-space: normal; }
  .table { overflow: visible; }
  td.inside, td.outside, td.spread, p.warning {
    print-color-adjust: exact; -webkit-print-color-adjust: exact; }
}
"""

# Cells the page styles by what they say: numbers and ranges right-aligned on one line, a bound
# kept on one line, verdicts coloured (a list of seeds may wrap between its numbers).
_NUMBER = r"[-+]?\d[\d.]*(?:e[-+]?\d+)?%?"
NUMBER = re.compile(rf"{_NUMBER}(?: \+- \d[\d.]*|-{_NUMBER})?")
BOUND = re.compile(rf"at most {_NUMBER}")


def cell_class(cell: str) -> str:
    if cell.startswith("inside"):
        return "inside"
    if cell.startswith("outside, but within the seed spread"):
        return "spread"
    if cell.startswith(("below by", "above by", "outside by")):
        return "outside"
    if cell in ("not run", "-", ""):
        return "muted"
    if NUMBER.fullmatch(cell):
        return "num"
    return "nowrap" if BOUND.fullmatch(cell) else ""


def render_html(doc: Document) -> str:
    body = [f"<h1>{_inline(doc.title)}</h1>", *(_html_block(b) for b in doc.preface)]
    body.append(_contents(doc.sections))
    for section in doc.sections:
        blocks = "\n".join(_html_block(block) for block in section.blocks)
        body.append(
            f'<section id="{section.anchor}">\n<h2>{_inline(section.title)}</h2>\n{blocks}\n'
            "</section>"
        )
    content = "\n".join(body)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(doc.title)}</title>\n<style>{STYLE}</style>\n</head>\n"
        f"<body>\n<main>\n{content}\n</main>\n</body>\n</html>\n"
    )


def _contents(sections: Sequence[Section]) -> str:
    items = "".join(f'<li><a href="#{s.anchor}">{_inline(s.title)}</a></li>' for s in sections)
    return f"<nav><strong>Contents</strong><ul>{items}</ul></nav>"


def _html_block(block: Block) -> str:
    if isinstance(block, Text):
        style = f' class="{block.style}"' if block.style else ""
        return f"<p{style}>{_inline(block.text)}</p>"
    if isinstance(block, Table):
        caption = f'<p class="caption">{_inline(block.caption)}</p>' if block.caption else ""
        head = "".join(f"<th>{_inline(h)}</th>" for h in block.headers)
        rows = "\n".join(
            "<tr>" + "".join(_html_cell(cell) for cell in row) + "</tr>" for row in block.rows
        )
        return (
            f'{caption}<div class="table"><table>\n<thead><tr>{head}</tr></thead>\n'
            f"<tbody>\n{rows}\n</tbody></table></div>"
        )
    data = base64.b64encode(block.png).decode("ascii")
    width, height = (round(side * CSS_DPI / DPI) for side in png_size(block.png))
    return (
        f'<figure><img src="data:image/png;base64,{data}" width="{width}" height="{height}" '
        f'alt="{html.escape(block.caption)}"><figcaption>{_inline(block.caption)}</figcaption>'
        "</figure>"
    )


def png_size(png: bytes) -> tuple[int, int]:
    """Width and height in pixels, from the PNG's header chunk."""
    if png[:8] != PNG_SIGNATURE or png[12:16] != b"IHDR":
        raise ValueError("not a PNG image")
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def _html_cell(cell: str) -> str:
    style = cell_class(cell)
    attribute = f' class="{style}"' if style else ""
    return f"<td{attribute}>{_inline(cell)}</td>"


def _inline(text: str) -> str:
    """Escaped text, `backticks` as code, [text](#anchor) as a link within the page."""
    escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text, quote=False))
    return re.sub(r"\[([^\]]+)\]\(#([\w-]+)\)", r'<a href="#\2">\1</a>', escaped)
