"""The report's HTML page, rendered from plain data: one self-contained file (inline CSS and a few lines of
inline JavaScript to sort tables), images referenced by relative paths, every text and attribute escaped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape

METRIC_NAMES = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy", "macro_f1": "macro F1"}


@dataclass(frozen=True)
class Mistake:
    """One gallery item: a wrong prediction and its thumbnail (`thumb` None when the image could not be read)."""

    id: str
    true: str
    predicted: str
    probability: float
    p_true: float
    thumb: str | None
    reason: str = ""


@dataclass(frozen=True)
class Figure:
    """A picture of the page (`src` relative to the page), or a note saying why there is none."""

    title: str
    src: str | None
    note: str = ""


@dataclass(frozen=True)
class Page:
    title: str
    random_init: bool
    facts: list
    headline: dict
    per_class: dict
    figures: list
    mistakes: list
    n_wrong: int
    failed: list
    n_failed: int
    notes: list = field(default_factory=list)
    failed_of: str = "the store"  # the selection the failed rows are of: "split 'test'", ...
    links: list = field(default_factory=list)


CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2330;background:#f4f6fa}
main{max-width:1180px;margin:0 auto;padding:24px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:19px;margin:32px 0 10px;border-bottom:2px solid #d8dee9;padding-bottom:4px}
.warn{background:#fff1e6;border:2px solid #e8590c;color:#7a2e00;padding:12px 16px;border-radius:8px;margin:14px 0;font-weight:600}
.note{background:#eef4ff;border-left:4px solid #4c6ef5;padding:8px 12px;margin:8px 0}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{background:#fff;border-radius:10px;padding:14px 18px;min-width:150px;box-shadow:0 1px 3px #0002}
.card .v{font-size:30px;font-weight:700;color:#1c5fb8}.card .k{color:#5b6475}
table{border-collapse:collapse;background:#fff;box-shadow:0 1px 3px #0002}
th,td{padding:5px 10px;border-bottom:1px solid #e5e9f0;text-align:left;vertical-align:top}
td.n{text-align:right;font-variant-numeric:tabular-nums}
table.sortable th{cursor:pointer;background:#e9eef6;user-select:none}
table.sortable th:after{content:" \\2195";color:#8a94a6}
table.facts th{background:#e9eef6;width:170px}
.figs{display:flex;flex-wrap:wrap;gap:16px}
figure{margin:0;background:#fff;padding:10px;border-radius:10px;box-shadow:0 1px 3px #0002}
figure img{max-width:100%;height:auto;display:block}figcaption{color:#5b6475;margin-top:6px}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:12px}
.tile{background:#fff;border-radius:10px;padding:8px;box-shadow:0 1px 3px #0002;font-size:13px;overflow-wrap:anywhere}
.tile img{width:100%;height:150px;object-fit:contain;background:#eceff4;border-radius:6px}
.tile .missing{height:150px;display:flex;align-items:center;justify-content:center;background:#eceff4;color:#8a94a6;
border-radius:6px;text-align:center;padding:6px}
.bad{color:#c92a2a;font-weight:600}.good{color:#2b8a3e;font-weight:600}
"""

# click a header to sort by its column (again to reverse); cells sort by their data-value
SORT_JS = """
document.querySelectorAll("table.sortable th").forEach(function (th, col) {
  th.addEventListener("click", function () {
    var body = th.closest("table").tBodies[0], up = th.dataset.order !== "asc";
    th.dataset.order = up ? "asc" : "desc";
    Array.from(body.rows).sort(function (a, b) {
      var x = a.cells[col].dataset.value, y = b.cells[col].dataset.value;
      var d = (isNaN(x) || isNaN(y)) ? x.localeCompare(y) : x - y;
      return up ? d : -d;
    }).forEach(function (row) { body.appendChild(row); });
  });
});
"""


def render_page(page: Page) -> str:
    """The whole HTML document of `page`."""
    parts = [f"<h1>{escape(page.title)}</h1>"]
    if page.random_init:
        parts.append('<p class="warn" id="random-init">These features come from a randomly initialised network '
                     "(<code>--weights none</code>): the numbers below are NOT pretrained results. They test the "
                     "pipeline, not what transfer learning can do.</p>")
    parts += [f'<p class="note">{escape(n)}</p>' for n in page.notes]
    parts += ["<h2>The run</h2>", _facts(page.facts)]
    parts += ["<h2>Metrics</h2>", _cards(page.headline), _per_class(page.per_class)]
    if page.links:
        parts.append("<p>" + " · ".join(f'<a href="{escape(href)}">{escape(text)}</a>' for text, href in page.links)
                     + "</p>")
    parts += ["<h2>Pictures</h2>", _figures(page.figures)]
    parts += [f"<h2>Most confident mistakes ({len(page.mistakes)} of {page.n_wrong} wrong)</h2>",
              _gallery(page.mistakes)]
    parts += [f"<h2>Failed rows ({page.n_failed})</h2>", _failed(page.failed, page.n_failed, page.failed_of)]
    body = "\n".join(parts)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(page.title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n{body}\n</main>\n"
        f"<script>{SORT_JS}</script>\n</body>\n</html>\n"
    )


def _number(value: float, digits: int = 4) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _cards(headline: dict) -> str:
    cards = []
    for key, value in headline.items():
        name = METRIC_NAMES.get(key, key.replace("_", " ").replace("top ", "top-"))
        cards.append(f'<div class="card" data-metric="{escape(key)}" data-value="{escape(repr(float(value)))}">'
                     f'<div class="v">{_number(value)}</div><div class="k">{escape(name)}</div></div>')
    return '<div class="cards">' + "".join(cards) + "</div>"


def _per_class(per_class: dict) -> str:
    head = "".join(f"<th>{h}</th>" for h in ("class", "precision", "recall", "F1", "support"))
    rows = []
    for name, row in per_class.items():
        cells = [f'<td data-value="{escape(name)}">{escape(name)}</td>']
        for key in ("precision", "recall", "f1"):
            cells.append(f'<td class="n" data-value="{escape(repr(float(row[key])))}">{_number(row[key], 3)}</td>')
        cells.append(f'<td class="n" data-value="{int(row["support"])}">{int(row["support"])}</td>')
        rows.append(f'<tr data-class="{escape(name)}">' + "".join(cells) + "</tr>")
    return (f'<p>Per class (click a header to sort):</p><table class="sortable" id="per-class"><thead><tr>{head}'
            f'</tr></thead><tbody>{"".join(rows)}</tbody></table>')


def _figures(figures: list) -> str:
    items = []
    for fig in figures:
        if fig.src is None:
            items.append(f'<p class="note">{escape(fig.title)}: {escape(fig.note)}</p>')
        else:
            caption = escape(fig.title) + (f" — {escape(fig.note)}" if fig.note else "")
            items.append(f'<figure><a href="{escape(fig.src)}" title="open at full size"><img src="{escape(fig.src)}" '
                         f'alt="{escape(fig.title)}"></a>'
                         f"<figcaption>{caption}</figcaption></figure>")
    return '<div class="figs">' + "".join(items) + "</div>"


def _gallery(mistakes: list) -> str:
    if not mistakes:
        return "<p>No mistakes: every evaluated row was predicted right.</p>"
    tiles = []
    for m in mistakes:
        if m.thumb is not None:
            picture = f'<img src="{escape(m.thumb)}" alt="{escape(m.id)}" loading="lazy">'
        else:
            picture = f'<div class="missing">image not shown: {escape(m.reason)}</div>'
        tiles.append(f'<div class="tile">{picture}<div>{escape(m.id)}</div>'
                     f'<div>true <span class="good">{escape(m.true)}</span></div>'
                     f'<div>predicted <span class="bad">{escape(m.predicted)}</span> p={_number(m.probability, 3)}</div>'
                     f"<div>p(true)={_number(m.p_true, 3)}{'' if m.p_true == m.p_true else ' (not a class of the head)'}"
                     "</div></div>")
    return '<div class="gallery">' + "".join(tiles) + "</div>"


def _failed(failed: list, n_failed: int, failed_of: str) -> str:
    if not n_failed:
        return f'<p id="failed-of">None: every image of {escape(failed_of)} was read and extracted.</p>'
    rows = "".join(f"<tr><td>{escape(i)}</td><td>{escape(reason)}</td></tr>" for i, reason in failed)
    more = f"<p>... and {n_failed - len(failed)} more.</p>" if n_failed > len(failed) else ""
    return (f'<p id="failed-of">These rows of {escape(failed_of)} failed when the store was extracted, so they are not '
            "in the metrics.</p>"
            f'<table id="failed"><thead><tr><th>image</th><th>reason</th></tr></thead><tbody>{rows}</tbody></table>'
            + more)


def _facts(facts: list) -> str:
    rows = "".join(f"<tr><th>{escape(label)}</th><td>{escape(text)}</td></tr>" for label, text in facts)
    return f'<table class="facts" id="run">{rows}</table>'
