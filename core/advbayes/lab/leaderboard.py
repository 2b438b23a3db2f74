"""advbayes leaderboard: a static HTML page (no server, no network, no script from elsewhere) ranking result cards
per data set and threat model, with intervals drawn as bars, and a detail page per card."""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from advbayes.lab.cards import ranked

BAR_WIDTH = 100
STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; }
table { border-collapse: collapse; margin: 12px 0; }
th, td { padding: 4px 10px; border-bottom: 1px solid #ddd; text-align: left; vertical-align: middle; }
td { white-space: nowrap; }
th.sortable { cursor: pointer; user-select: none; }
th.sortable:after { content: " \\2195"; color: #999; }
tr.failed td { color: #999; }
.fail { color: #b00020; font-weight: 600; }
.pass { color: #1b7f3b; }
.note { color: #555; font-size: 13px; }
label { margin-right: 16px; }
"""
SCRIPT = """
function applyFilters() {
  const dataset = document.getElementById('dataset').value, threat = document.getElementById('threat').value;
  for (const row of document.querySelectorAll('#board tbody tr')) {
    row.hidden = row.dataset.dataset !== dataset || row.dataset.threat !== threat;
  }
}
function sortBy(column) {
  const body = document.querySelector('#board tbody'), header = document.querySelectorAll('#board th')[column];
  const descending = header.dataset.order !== 'desc';
  header.dataset.order = descending ? 'desc' : 'asc';
  const rows = Array.from(body.rows);
  rows.sort((a, b) => {
    const x = a.cells[column].dataset.sort, y = b.cells[column].dataset.sort;
    const order = isNaN(x) || isNaN(y) ? x.localeCompare(y) : Number(x) - Number(y);
    return descending ? -order : order;
  });
  rows.forEach(row => body.appendChild(row));
}
document.addEventListener('DOMContentLoaded', applyFilters);
"""


def interval_bar(value: float, low: float, high: float) -> str:
    """An inline SVG: the 95 % interval as a bar on [0, 1], the value as a tick."""
    x = lambda v: round(v * BAR_WIDTH, 1)  # noqa: E731
    return (
        f'<svg width="{BAR_WIDTH}" height="12" role="img" aria-label="{value:.3f} [{low:.3f}, {high:.3f}]">'
        f'<rect x="0" y="5" width="{BAR_WIDTH}" height="2" fill="#eee"/>'
        f'<rect x="{x(low)}" y="2" width="{max(x(high) - x(low), 1)}" height="8" fill="#9ecae1"/>'
        f'<rect x="{max(x(value) - 1, 0)}" y="0" width="2" height="12" fill="#08519c"/></svg>'
    )


def stat_cell(stat: Mapping[str, Any]) -> str:
    """A table cell: value [interval], +- the seeds' sd, and the bar."""
    low, high = stat["interval"]
    text = f"{stat['value']:.3f} [{low:.3f}, {high:.3f}] &plusmn; {stat['seed_sd']:.3f}"
    return f'<td data-sort="{stat["value"]:.6f}">{interval_bar(stat["value"], low, high)} {text}</td>'


def card_page_name(card: Mapping[str, Any]) -> str:
    """The detail page of a card."""
    return f"{card['protocol']['dataset']}--{card['defense']['entry']}.html".replace("/", "_")


def run_link(card: Mapping[str, Any], run_id: str, ui: str | None) -> str:
    """A run id, linked to the MLflow UI when one is given."""
    experiment = card["runs"].get("experiment_id", "")
    if not ui or not experiment:
        return html.escape(run_id)
    return f'<a href="{html.escape(ui.rstrip("/"))}/#/experiments/{experiment}/runs/{run_id}">{run_id}</a>'


def board_rows(cards: Sequence[Mapping[str, Any]]) -> list[str]:
    """One row per card and threat model, ranked within each data set and threat model."""
    rows = []
    groups = sorted({(c["protocol"]["dataset"], t) for c in cards for t in c["threat_models"]})
    for dataset, threat in groups:
        members = [c for c in cards if c["protocol"]["dataset"] == dataset and threat in c["threat_models"]]
        for rank, card in enumerate(ranked(members, threat), start=1):
            section = card["threat_models"][threat]
            failed = [c["name"] for c in card["checks"] if c["status"] == "failed"]
            checks = (
                f'<span class="fail">failed: {html.escape(", ".join(failed))}</span>'
                if failed
                else '<span class="pass">all passed</span>'
            )
            entry = html.escape(card["defense"]["entry"])
            rows.append(
                f'<tr data-dataset="{html.escape(dataset)}" data-threat="{html.escape(threat)}"'
                f"{' class=failed' if failed else ''}>"
                f'<td data-sort="{rank}">{rank}</td>'
                f'<td data-sort="{entry}"><a href="{card_page_name(card)}">{entry}</a></td>'
                f'<td data-sort="{html.escape(card["model"])}">{html.escape(card["model"])}</td>'
                f'<td data-sort="{int(card["stochastic"])}">{"yes" if card["stochastic"] else "no"}</td>'
                f"{stat_cell(card['clean'])}"
                f"{stat_cell(section['radii'][section['headline']])}"
                f'<td data-sort="{len(card["runs"]["seeds"])}">{len(card["runs"]["seeds"])}</td>'
                f'<td data-sort="{len(failed)}">{checks}</td>'
                f'<td data-sort="{int(card["conforms"])}">{"yes" if card["conforms"] else "no: " + html.escape("; ".join(card["deviations"]))}</td>'  # noqa: E501
                "</tr>"
            )
    return rows


def index_page(cards: Sequence[Mapping[str, Any]]) -> str:
    """The ranking page."""
    datasets = sorted({c["protocol"]["dataset"] for c in cards})
    threats = sorted({t for c in cards for t in c["threat_models"]})
    radii = sorted(
        {f"{c['protocol']['dataset']} {t}: eps {s['headline']}" for c in cards for t, s in c["threat_models"].items()}
    )
    options = lambda values: "".join(f"<option>{html.escape(v)}</option>" for v in values)  # noqa: E731
    header = ["rank", "defense", "model", "stochastic", "clean accuracy", "robust accuracy", "seeds", "checks"]
    heads = "".join(f'<th class="sortable" onclick="sortBy({i})">{h}</th>' for i, h in enumerate([*header, "conforms"]))
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>advbayes leaderboard</title>"
        f"<style>{STYLE}</style><script>{SCRIPT}</script></head><body>"
        "<h1>advbayes leaderboard of stochastic defenses</h1>"
        '<p class="note">Robust accuracy: an example counts only when it survives every attack of the protocol '
        "(autoattack or autoattack-rand, EOT-PGD-10 and -40, transfer from the deterministic twin), each judged "
        "correct in all R predictions; the mean over seeds, the 95 % Wilson interval of all verdicts pooled (bar) "
        "and the seeds' sd. A card with a failed check is never ranked above a passing one. Ranked at "
        f"{html.escape('; '.join(radii))}.</p>"
        f'<label>data set <select id="dataset" onchange="applyFilters()">{options(datasets)}</select></label>'
        f'<label>threat model <select id="threat" onchange="applyFilters()">{options(threats)}</select></label>'
        f'<table id="board"><thead><tr>{heads}</tr></thead><tbody>{"".join(board_rows(cards))}</tbody></table>'
        "</body></html>\n"
    )


def eps_figure(section: Mapping[str, Any], clean: float, width: int = 420, height: int = 260) -> str:
    """An inline SVG of accuracy against eps (from clean accuracy at 0): the worst case per example with its
    intervals, each attack's mean dashed, and a legend under it."""
    radii = sorted(section["radii"], key=float)
    top = max(float(r) for r in radii) or 1.0
    left, bottom = 40, 30

    def point(eps: str, value: float) -> tuple[float, float]:
        x = left + (width - left - 10) * float(eps) / top
        return round(x, 1), round(10 + (height - bottom - 10) * (1 - value), 1)

    lines, legend = [], ['<span style="color:#08519c">&#9644; worst case per example (95 % intervals)</span>']
    attacks = sorted({a for r in radii for a in section["radii"][r]["by_attack"]})
    palette = ["#e6550d", "#31a354", "#756bb1", "#636363", "#d6616b", "#17becf"]
    for i, attack in enumerate(attacks):
        points = [point("0", clean)] + [
            point(r, section["radii"][r]["by_attack"][attack])
            for r in radii
            if attack in section["radii"][r]["by_attack"]
        ]
        color = palette[i % len(palette)]
        path = " ".join(f"{x},{y}" for x, y in points)
        lines.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-dasharray="4 3"/>')
        legend.append(f'<span style="color:{color}">- - {html.escape(attack)}</span>')
    worst = [point("0", clean)] + [point(r, section["radii"][r]["value"]) for r in radii]
    path = " ".join(f"{x},{y}" for x, y in worst)
    lines.append(f'<polyline points="{path}" fill="none" stroke="#08519c" stroke-width="2"/>')
    for r, (x, _) in zip(["0", *radii], worst):
        if r != "0":
            low, high = section["radii"][r]["interval"]
            (_, y_low), (_, y_high) = point(r, low), point(r, high)
            lines.append(f'<line x1="{x}" x2="{x}" y1="{y_low}" y2="{y_high}" stroke="#08519c"/>')
        lines.append(f'<text x="{x}" y="{height - 12}" font-size="10" text-anchor="middle">{r}</text>')
    for value in (0.0, 0.5, 1.0):
        _, y = point("0", value)
        lines.append(f'<text x="{left - 6}" y="{y + 3}" font-size="10" text-anchor="end">{value:g}</text>')
        lines.append(f'<line x1="{left}" x2="{width - 10}" y1="{y}" y2="{y}" stroke="#eee"/>')
    return (
        f'<svg width="{width}" height="{height}" role="img" aria-label="accuracy against eps">'
        + "".join(lines)
        + f'<text x="{width / 2}" y="{height - 1}" font-size="11" text-anchor="middle">'
        + f"eps ({section['norm']} norm; 0: clean accuracy)</text></svg>"
        + f'<p class="note">{" &nbsp; ".join(legend)}</p>'
    )


def card_page(card: Mapping[str, Any], ui: str | None) -> str:
    """A defense's detail page: accuracy against eps per threat model, its checks, settings, provenance and runs."""
    entry = html.escape(card["defense"]["entry"])
    figures = "".join(
        f"<h3>{html.escape(threat)}</h3>{eps_figure(section, card['clean']['value'])}"
        for threat, section in sorted(card["threat_models"].items())
    )
    checks = "".join(
        f'<tr><td>{html.escape(c["name"])}</td><td class="{"fail" if c["status"] == "failed" else "pass"}">'
        f"{html.escape(c['status'])}</td><td>{html.escape(c['detail'])}</td></tr>"
        for c in card["checks"]
    )
    runs = "".join(
        f"<tr><td>{html.escape(seed)}</td><td>{html.escape(role)}</td><td>{run_link(card, run_id, ui)}</td></tr>"
        for seed, roles in sorted(card["runs"]["seeds"].items())
        for role, run_id in sorted(roles.items())
    )
    provenance = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in sorted(card["provenance"].items())
    )
    deviations = "; ".join(card["deviations"]) or "none: the card follows the protocol"
    params = json.dumps(card["defense"]["params"], indent=1, sort_keys=True)
    given = ", ".join(card["defense"]["settings"]) or "none (the bench experiment's training)"
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{entry} - advbayes leaderboard</title>"
        f"<style>{STYLE}</style></head><body><p><a href='index.html'>&larr; leaderboard</a></p>"
        f"<h1>{entry} on {html.escape(card['protocol']['dataset'])}</h1>"
        f"<p>model {html.escape(card['model'])}, {'stochastic' if card['stochastic'] else 'deterministic'}, "
        f"protocol {card['protocol']['version']}, {len(card['runs']['seeds'])} seed(s), device "
        f"{html.escape(card['device'])}, {card['seconds']:.0f} s. Deviations: {html.escape(deviations)}.</p>"
        f"<p>Settings given: {html.escape(given)}.</p>"
        f"<h2>Robust accuracy against eps</h2><p class='note'>Solid: the worst case per example over every attack, "
        f"with 95 % intervals; dashed: each attack alone (mean over seeds).</p>{figures}"
        f"<h2>Checks</h2><table><tr><th>check</th><th>outcome</th><th>detail</th></tr>{checks}</table>"
        f"<h2>Defense parameters</h2><pre>{html.escape(params)}</pre>"
        f"<h2>Runs</h2><p class='note'>store {html.escape(card['runs']['store'])}</p>"
        f"<table><tr><th>seed</th><th>run</th><th>id</th></tr>{runs}</table>"
        f"<h2>Provenance</h2><table>{provenance}</table></body></html>\n"
    )


def write_leaderboard(cards: Sequence[Mapping[str, Any]], out: Path, ui: str | None = None) -> Path:
    """index.html and one page per card in `out`; the same cards give the same bytes."""
    out.mkdir(parents=True, exist_ok=True)
    for card in cards:
        (out / card_page_name(card)).write_text(card_page(card, ui))
    index = out / "index.html"
    index.write_text(index_page(cards))
    return index
