"""Self-contained HTML pages of the summary's Markdown (the results table, the search statistics),
for `snakemake --report`, which shows an .html item inline (in an iframe) but offers Markdown and
CSV only as downloads.

`markdown_to_html` converts the Markdown subset this package writes (`tables.to_markdown`,
`search_stats.search_stats_markdown`): `#` headings, pipe tables with an alignment row, `- ` list
items and paragraphs; every text is HTML-escaped, nothing else is interpreted. `page` wraps a
body in a standalone document with a small inline stylesheet (no script, no external file).

`results_page` marks its headline (the caption and the table by benchmark) with the comments
`HEADLINE_START` and `HEADLINE_END`: the workflow description (workflow/report/workflow.rst)
embeds what lies between them on the report's front page.
"""

from __future__ import annotations

import html

__all__ = ["HEADLINE_END", "HEADLINE_START", "markdown_to_html", "page", "results_page"]

HEADLINE_START = "<!-- headline -->"
HEADLINE_END = "<!-- /headline -->"

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; font-size: 14px;
       color: #1f2933; background: #fff; margin: 1.5em; line-height: 1.4; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table.retro-search { border-collapse: collapse; margin: 0.6em 0; font-variant-numeric: tabular-nums; }
table.retro-search th, table.retro-search td { border: 1px solid #cbd2d9; padding: 0.25em 0.6em;
                                                white-space: nowrap; }
table.retro-search th { background: #eef2f6; }
table.retro-search tbody tr:nth-child(even) { background: #f7f9fb; }
p.note { color: #52606d; font-size: 0.9em; max-width: 60em; }
"""


def _row(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _is_alignment(line: str) -> bool:
    cells = _row(line)
    return bool(cells) and all(c and set(c) <= set(":-") for c in cells)


def _table(lines: list[str]) -> str:
    header, alignment, body = _row(lines[0]), _row(lines[1]), [_row(l) for l in lines[2:]]
    align = ["right" if a.endswith(":") else "left" for a in alignment]

    def cells(values: list[str], tag: str) -> str:
        return "".join(f'<{tag} style="text-align: {a}">{html.escape(v)}</{tag}>'
                       for v, a in zip(values, align))

    rows = "".join(f"<tr>{cells(r, 'td')}</tr>" for r in body)
    return (f'<table class="retro-search"><thead><tr>{cells(header, "th")}</tr></thead>'
            f"<tbody>{rows}</tbody></table>")


def markdown_to_html(text: str) -> str:
    """HTML of the Markdown subset described in the module docstring; a line that is none of
    heading, table or list item is paragraph text (consecutive lines form one paragraph)."""
    blocks: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")), 6)
            blocks.append(f"<h{level}>{html.escape(line[level:].strip())}</h{level}>")
            i += 1
        elif line.startswith("|") and i + 1 < len(lines) and _is_alignment(lines[i + 1]):
            end = i + 2
            while end < len(lines) and lines[end].startswith("|"):
                end += 1
            blocks.append(_table(lines[i:end]))
            i = end
        elif line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{html.escape(lines[i][2:].strip())}</li>")
                i += 1
            blocks.append(f"<ul>{''.join(items)}</ul>")
        else:
            paragraph = []
            while i < len(lines) and lines[i].strip() and not lines[i].startswith(("#", "|", "- ")):
                paragraph.append(lines[i].strip())
                i += 1
            blocks.append(f'<p class="note">{html.escape(" ".join(paragraph))}</p>')
    return "\n".join(blocks)


def page(title: str, body: str) -> str:
    """A standalone HTML document: `title`, the inline stylesheet, then `body` (HTML)."""
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
            f"<h1>{html.escape(title)}</h1>\n{body}\n</body>\n</html>\n")


def results_page(headline_markdown: str, table_markdown: str, *, title: str = "Results") -> str:
    """The results table's page: the headline (between the markers), then the full table."""
    body = (f"{HEADLINE_START}\n{markdown_to_html(headline_markdown)}\n{HEADLINE_END}\n"
            f"<h2>Per benchmark</h2>\n{markdown_to_html(table_markdown)}")
    return page(title, body)
