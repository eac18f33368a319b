"""Human-readable data docs for one validate run: a single self-contained HTML page.

Plays the role of Great Expectations' Data Docs for the whole contract (the GX suite and
the per-entity checks alike): a summary table, then per check its message, a sample of
offenders and its details. Inline CSS only, no scripts or external assets, so the page
opens from a CI artifact or a DVC-tracked folder as is. Every value from the data (entity
keys, category values) is escaped: keys come from users and may hold markup.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from data_checks.results import CheckResult, ValidationReport
from seqcore.io import atomic_dir

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:72rem;
color:#1f2328;padding:0 1rem}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #d0d7de}
table{border-collapse:collapse;margin:.5rem 0 1rem;width:100%}
th,td{border:1px solid #d0d7de;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#f6f8fa}td.n{text-align:right;font-variant-numeric:tabular-nums}
.pass{color:#1a7f37;font-weight:600}.fail{color:#cf222e;font-weight:600}
.skipped{color:#6e7781}.quarantine{color:#9a6700;font-weight:600}
pre{background:#f6f8fa;padding:.6rem;overflow:auto;max-height:24rem;font-size:12px}
.note{background:#ddf4ff;border:1px solid #54aeff;padding:.5rem .75rem;border-radius:4px}
.banner{padding:.6rem .9rem;border-radius:4px;font-weight:600}
.banner.ok{background:#dafbe1}.banner.bad{background:#ffebe9}
"""


def _e(value: Any) -> str:
    """Escape anything for HTML text or attribute context."""
    if isinstance(value, float):
        value = f"{value:.6g}"
    return html.escape(str(value), quote=True)


def _status(result: CheckResult) -> str:
    css = result.status
    label = result.status
    if result.status == "fail" and result.policy == "quarantine":
        css, label = "quarantine", "quarantined"
    return f'<span class="{css}">{_e(label)}</span>'


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p><em>none</em></p>"
    columns: list[str] = []
    for row in rows:
        columns.extend(c for c in row if c not in columns)
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_e(_cell(row.get(c)))}</td>" for c in columns) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _cell(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def _gx_note(gx: dict[str, Any]) -> str:
    if not gx.get("ran"):
        if gx.get("error"):
            return (
                f"Great Expectations could not run: {gx['error']}. The exact checks still decided."
            )
        return "The Great Expectations suite did not run (no column checks enabled, or no rows)."
    stats = gx.get("statistics", {})
    scope = (
        f"a deterministic sample of {gx.get('sample_rows')} of {gx.get('rows')} rows "
        f"({gx.get('sampling')}); row counts below come from exact checks over every row"
        if gx.get("sampled")
        else f"all {gx.get('rows')} rows"
    )
    return (
        f"Great Expectations {gx.get('version', '')} evaluated "
        f"{stats.get('evaluated_expectations', '?')} expectations "
        f"({stats.get('successful_expectations', '?')} passed) on {scope}."
    )


def render(report: ValidationReport, title: str = "seqops data validation") -> str:
    """The data docs page for ``report`` as one HTML string."""
    failed = report.failed()
    banner = (
        f'<p class="banner bad">{len(failed)} blocking check(s) failed: '
        f"{_e(', '.join(r.name for r in failed))}</p>"
        if failed
        else '<p class="banner ok">All blocking checks passed.</p>'
    )
    counts = {
        "rows in": report.rows_in,
        "rows out (validated)": report.rows_out,
        "rows quarantined": report.rows_quarantined,
        "reference time (now)": report.now,
        "duration (s)": round(report.duration_s, 3),
    }
    summary_rows = "".join(
        f'<tr><td><a href="#{_e(r.name)}">{_e(r.name)}</a></td><td>{_status(r)}</td>'
        f'<td>{_e(r.policy)}</td><td class="n">{r.violating_rows}</td>'
        f'<td class="n">{r.violating_entities}</td><td>{_e(r.message)}</td></tr>'
        for r in report.results
    )
    sections = []
    for r in report.results:
        details = {k: v for k, v in r.details.items() if k != "gx"}
        gx_items = r.details.get("gx") or []
        part = [
            f'<h2 id="{_e(r.name)}">{_e(r.name)} &mdash; {_status(r)}</h2>',
            f"<p>policy <b>{_e(r.policy)}</b>; {r.violating_rows} violating row(s), "
            f"{r.violating_entities} entit{'y' if r.violating_entities == 1 else 'ies'}; "
            f"{r.duration_s:.3f} s</p>",
        ]
        if r.message:
            part.append(f"<p>{_e(r.message)}</p>")
        if r.sample:
            part += ["<h3>Sample offenders</h3>", _table(r.sample)]
        if gx_items:
            part += ["<h3>Great Expectations</h3>", _table(gx_items)]
        if details:
            text = json.dumps(details, indent=2, sort_keys=True, default=str)
            part.append(f"<details><summary>details</summary><pre>{_e(text)}</pre></details>")
        sections.append("\n".join(part))
    quarantined = [{"check": k, "rows": v} for k, v in report.quarantined.items()]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title><style>{_CSS}</style></head>
<body>
<h1>{_e(title)}</h1>
{banner}
{_table([counts])}
<p class="note">{_e(_gx_note(report.gx))}</p>
<h2>Checks</h2>
<table><tr><th>check</th><th>status</th><th>policy</th><th>violating rows</th>
<th>entities</th><th>message</th></tr>
{summary_rows}
</table>
<h2>Quarantine</h2>
{_table(quarantined)}
{"".join(sections)}
</body></html>
"""


def write_docs(report: ValidationReport, docs_dir: str | Path) -> Path:
    """Write ``<docs_dir>/index.html`` atomically (the whole folder is replaced)."""
    docs_dir = Path(docs_dir)
    with atomic_dir(docs_dir) as tmp:
        (tmp / "index.html").write_text(render(report), encoding="utf-8")
    return docs_dir / "index.html"
