"""One document, two renderings: a self-contained HTML page (figures inlined as data: URIs, styles inline, no
script, no network) and GitHub Markdown (figures as PNG files beside it). Both are rendered from the same blocks
and the same display strings, so they say the same thing.
"""
from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field

import pandas as pd

from .figures import Figure
from .tables import Table


@dataclass
class Heading:
    text: str
    level: int = 2

    @property
    def anchor(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.text.lower()).strip("-")


@dataclass
class Para:
    text: str  # plain text; **bold** and `code` are the only markup, rendered in both formats
    kind: str = ""  # "summary", "warning", "note" or "" (a plain paragraph)


@dataclass
class Items:
    items: list[str]


@dataclass
class Box:
    """The conclusion: a lead sentence and its supporting points, set apart from the rest."""

    lead: str
    items: list[str]


@dataclass
class TableBlock:
    table: Table
    caption: str = ""


@dataclass
class FigureBlock:
    figure: Figure


@dataclass
class Code:
    text: str


@dataclass
class Document:
    title: str
    subtitle: str = ""
    blocks: list = field(default_factory=list)

    def add(self, *blocks) -> None:
        self.blocks.extend(b for b in blocks if b is not None)


# ---------------------------------------------------------------------------------------------- HTML
CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:#1d2327;margin:0;
background:#fafafa;line-height:1.5}
main{max-width:1180px;margin:0 auto;padding:24px 32px 64px;background:#fff;box-shadow:0 0 8px rgba(0,0,0,.06)}
h1{font-size:1.75em;margin:.2em 0 .1em}h2{font-size:1.3em;margin-top:2em;border-bottom:2px solid #e3e6e8;
padding-bottom:.2em}h3{font-size:1.05em;margin-top:1.4em}
.subtitle{color:#555;margin:0 0 1em}
.summary{background:#eef6ee;border-left:5px solid #3b8a3e;padding:4px 16px;margin:16px 0}
.summary p{font-size:1.1em}.summary li{margin:3px 0}
.warning{background:#fff6e0;border-left:5px solid #d19a00;padding:10px 16px;margin:12px 0}
.note{color:#444;font-size:.93em}
nav ul{columns:3;font-size:.93em;list-style:none;padding-left:0}
table{border-collapse:collapse;margin:8px 0 4px;font-size:.86em;width:100%}
th,td{border:1px solid #dde1e4;padding:4px 7px;vertical-align:top}
th{background:#f1f3f5;text-align:left;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr:nth-child(even) td{background:#fbfcfc}
tr.strong td{font-weight:600;background:#eef6ee}
tr.muted td{color:#555;font-style:italic;background:#f7f7f7}
.caption{font-size:.88em;color:#444;margin:2px 0 14px}
figure{margin:16px 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.88em;color:#444}
code,pre{font-family:SFMono-Regular,Menlo,Consolas,monospace;font-size:.88em;background:#f3f4f5}
pre{padding:8px 10px;overflow-x:auto;white-space:pre-wrap}
"""
NUMERIC = re.compile(r"^[−\-+]?[\d.]+(e[−\-+]?\d+)?( ± [\d.]+(e[−\-+]?\d+)?)?$|^\d+ ?/ ?\d+$|^—$")


def inline_html(text: str) -> str:
    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


def table_html(block: TableBlock) -> str:
    t = block.table
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in t.display.columns)
    body = []
    for i, row in enumerate(t.display.itertuples(index=False)):
        cls = " class=\"strong\"" if i in t.strong_rows else " class=\"muted\"" if i in t.muted_rows else ""
        cells = "".join(f"<td class=\"num\">{html.escape(str(v))}</td>" if NUMERIC.match(str(v))
                        else f"<td>{html.escape(str(v))}</td>" for v in row)
        body.append(f"<tr{cls}>{cells}</tr>")
    caption = f"<p class=\"caption\">{inline_html(block.caption)} Data: <code>{t.name}.csv</code>.</p>"
    return (f"<table id=\"table-{t.name}\"><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
            + caption)


def figure_html(block: FigureBlock) -> str:
    f = block.figure
    data = base64.b64encode(f.png).decode("ascii")
    return (f"<figure id=\"figure-{f.name.rsplit('.', 1)[0]}\"><img src=\"data:image/png;base64,{data}\" "
            f"alt=\"{html.escape(f.alt)}\"><figcaption>{inline_html(f.caption)} Data: <code>{f.data}</code>."
            "</figcaption></figure>")


def _ul(items: list[str]) -> str:
    return "<ul>" + "".join(f"<li>{inline_html(i)}</li>" for i in items) + "</ul>" if items else ""


def to_html(doc: Document) -> str:
    parts, toc = [], []
    for block in doc.blocks:
        if isinstance(block, Heading):
            if block.level == 2:
                toc.append(f"<li><a href=\"#{block.anchor}\">{html.escape(block.text)}</a></li>")
            parts.append(f"<h{block.level} id=\"{block.anchor}\">{html.escape(block.text)}</h{block.level}>")
        elif isinstance(block, Para):
            cls = f" class=\"{block.kind}\"" if block.kind else ""
            parts.append(f"<p{cls}>{inline_html(block.text)}</p>")
        elif isinstance(block, Items):
            parts.append(_ul(block.items))
        elif isinstance(block, Box):
            parts.append(f"<div class=\"summary\"><p>{inline_html(block.lead)}</p>{_ul(block.items)}</div>")
        elif isinstance(block, TableBlock):
            parts.append(table_html(block))
        elif isinstance(block, FigureBlock):
            parts.append(figure_html(block))
        elif isinstance(block, Code):
            parts.append(f"<pre><code>{html.escape(block.text)}</code></pre>")
    nav = f"<nav><ul>{''.join(toc)}</ul></nav>" if toc else ""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(doc.title)}</title><style>{CSS}</style></head><body><main>"
            f"<h1>{html.escape(doc.title)}</h1><p class=\"subtitle\">{inline_html(doc.subtitle)}</p>{nav}"
            + "\n".join(parts) + "</main></body></html>\n")


# ---------------------------------------------------------------------------------------------- Markdown
def _md_cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def table_md(block: TableBlock) -> str:
    d: pd.DataFrame = block.table.display
    head = "| " + " | ".join(_md_cell(c) for c in d.columns) + " |"
    rule = "|" + "|".join("---:" if _numeric_column(d[c]) else "---" for c in d.columns) + "|"
    rows = []
    for i, row in enumerate(d.itertuples(index=False)):
        cells = [_md_cell(v) for v in row]
        if i in block.table.strong_rows:
            cells[0] = f"**{cells[0]}**"
        if i in block.table.muted_rows:
            cells[0] = f"*{cells[0]}*"
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join([head, rule, *rows]) + f"\n\n{block.caption} Data: `{block.table.name}.csv`."


def _numeric_column(column: pd.Series) -> bool:
    values = [str(v) for v in column]
    return bool(values) and all(NUMERIC.match(v) for v in values)


def to_markdown(doc: Document) -> str:
    parts = [f"# {doc.title}", doc.subtitle]
    for block in doc.blocks:
        if isinstance(block, Heading):
            parts.append("#" * block.level + " " + block.text)
        elif isinstance(block, Para):
            parts.append(f"> {block.text}" if block.kind in ("summary", "warning") else block.text)
        elif isinstance(block, Items):
            parts.append("\n".join(f"- {i}" for i in block.items))
        elif isinstance(block, Box):
            parts.append("\n".join([f"> {block.lead}", ">", *(f"> - {i}" for i in block.items)]))
        elif isinstance(block, TableBlock):
            parts.append(table_md(block))
        elif isinstance(block, FigureBlock):
            f = block.figure
            parts.append(f"![{f.alt}]({f.name})\n\n{f.caption} Data: `{f.data}`.")
        elif isinstance(block, Code):
            parts.append(f"```\n{block.text}\n```")
    return "\n\n".join(p for p in parts if p) + "\n"
