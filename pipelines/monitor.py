"""``seqops monitor``: does a new batch of events still look like what the model learned from?

The batch is read as the ingest stage reads a user's table (the same formats, checks and
time zones), encoded with the model's own preprocessing, and profiled (``seqcore.profile``);
each statistic is compared with the training profile in the model's shard manifest
(``data_checks.drift``). Written:

- ``--report`` (``reports/drift.json``): every statistic's distance, test and summary, the
  thresholds, and which statistics drifted;
- ``--html`` (``reports/drift.html``): the same as a page, with each statistic's reference
  and current shares drawn side by side.

With ``--labels`` (outcomes that arrived later: entity, time, label), the report also holds
the model's metrics per window of label time against its evaluation metrics, each label
scored on its entity's events up to its time (``pipelines.performance``).

Exit status: 0 when nothing drifted or degraded, 1 when a statistic drifted or a labelled
window degraded (so a scheduler or CI job can stop on it), 2 when the input, the outputs or
params are wrong, 3 on any other failure (nothing written then).

The batch should hold sequences as the reference does: whole histories, or at least the
model's window of each entity. A batch of one day's events of entities with a year of
history has shorter sequences and fewer long gaps than training had, and ``length`` and
``gap`` say so. The reference's ``order`` is counted on validated events: rows the contract
quarantined are not in it, and a raw batch that holds such rows shows them as drift.

    seqops monitor --events new.parquet                      # against the champion
    seqops monitor --events new.parquet --labels outcomes.parquet
    seqops monitor --events data/events --shards data/shards # against shards, before a model
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import html
import io as stdio
import json
import logging
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from data_checks.contract import check_contract
from data_checks.drift import (
    ORDERING_CHECKS,
    DriftThresholds,
    StatisticDrift,
    compare,
    contract_hists,
)
from pipelines.config import Params, load_params
from pipelines.ingest import IngestError
from pipelines.ingest import arrival_order as ingest_arrival
from pipelines.performance import (
    LabelsError,
    check_keys,
    performance,
    read_labels,
    read_user_table,
)
from seqcore import io
from seqcore.config import ConfigError
from seqcore.encoding import EncodedSequence, encode
from seqcore.loading import ModelLoadError, load_scorer, pinned, tracking_uri
from seqcore.manifest import Manifest, ManifestError, load_manifest
from seqcore.profile import (
    Hist,
    Profile,
    profile_sequences,
    score_hist,
    scores_of,
    table_arrival,
    transition_column,
)
from seqcore.schema import ARRIVAL, SchemaConfig
from seqcore.scorer import SequenceScorer
from seqcore.store import POINTER, StoreError, read_events

log = logging.getLogger("seqops.monitor")


class MonitorError(ValueError):
    """Input the monitor cannot use; the message names it and the fix."""


def read_batch(where: str, params: Params, manifest: Manifest) -> pa.Table:
    """The batch's events with the model's columns, times in UTC, rows in arrival order: an
    events output of this pipeline (a folder of parts or its pointer: each part, and so each
    entity, in the order ingest recorded), or a user's file or folder read as ``data.format`` and
    ``data.source_timezone`` say, in the order of the schema's arrival column when it has
    one, else in file order. New traffic has no labels yet: none is asked for."""
    schema = manifest.schema
    if not (Path(where).is_dir() and (Path(where) / POINTER).exists()):
        mapped = dataclasses.replace(schema, label=None, arrival=None)
        table = read_user_table(where, params.data, mapped, "event", MonitorError)
        if schema.arrival and schema.arrival in table.column_names:
            rows = ingest_arrival(table, schema.arrival, params.data.source_timezone)
            table = table.take(pa.array(rows))
        return table
    return check_keys(read_events(where), schema, where, "event", MonitorError)


def profile_batch(
    table: pa.Table,
    manifest: Manifest,
    scorer: SequenceScorer | None = None,
    sequences: list[EncodedSequence] | None = None,
) -> Profile:
    """The batch's profile as the model would see it, with the arrival order of its rows and,
    given the model, its score of each entity's latest window (as the endpoint scores it).
    ``sequences``: the table already encoded with the manifest's preprocessing."""
    schema, spec = manifest.schema, manifest.features
    if sequences is None:
        sequences = encode(table, spec, schema)
    profile = profile_sequences(sequences, spec, transition_column(schema))
    profile.order = table_arrival(table, schema)
    if scorer is not None and sequences:
        outputs = scorer.forward_sequences(sequences, scorer.window_len)
        profile.score = score_hist(scorer.config.task, scores_of(scorer.config.task, outputs))
    return profile


def batch_contract(table: pa.Table, params: Params, schema: SchemaConfig) -> dict[str, Hist]:
    """The batch's rows through the data contract's ordering checks (``validate.checks``, as
    the validate stage runs them, on the rows in arrival order), as two-bin histograms. The
    watermark check (``late_events``) needs the order rows reached the system: a pipeline
    events output records it, a user's file only with its arrival column mapped."""
    checks = {
        name: dataclasses.replace(check, enabled=check.enabled and name in ORDERING_CHECKS)
        for name, check in params.validate.checks.items()
    }  # the rest are per-event rules requests meet at the endpoint, and GX's suite
    config = dataclasses.replace(params.validate, checks=checks)
    known = ARRIVAL in table.column_names or schema.arrival is not None
    if ARRIVAL not in table.column_names:
        table = table.append_column(ARRIVAL, pa.array(np.arange(table.num_rows, dtype=np.int64)))
    now = params.validate.now or datetime.now(UTC)
    report, _ = check_contract(table, dataclasses.replace(schema, label=None), config, now, known)
    return contract_hists(report.to_json())


def _reference(
    args: argparse.Namespace, params: Params
) -> tuple[Manifest, SequenceScorer | None, str, str | None]:
    """The reference's manifest, the model's scorer (None for shards), what the report names
    as the reference, and the id of the run that logged the model."""
    if args.shards:
        return load_manifest(args.shards), None, str(args.shards), None
    named = args.model or f"models:/{params.register.model_name}@champion"
    uri, run_id = pinned(named, tracking_uri())  # the scorer and its run from one version
    scorer = load_scorer(uri, tracking_uri())
    return scorer.manifest, scorer, uri if uri == named else f"{named} ({uri})", run_id


def report(
    statistics: list[StatisticDrift],
    reference: Profile,
    current: Profile,
    thresholds: DriftThresholds,
    against: str,
    events: str,
) -> dict[str, Any]:
    drifted = [s.name for s in statistics if s.drifted]
    return {
        "passed": not drifted,
        "drifted": drifted,
        "reference": {
            "source": against,
            "sequences": reference.sequences,
            "events": reference.events,
        },  # fmt: skip
        "current": {"source": events, "sequences": current.sequences, "events": current.events},
        "decides": current.sequences >= thresholds.min_sequences,
        "thresholds": dataclasses.asdict(thresholds),
        "statistics": [s.to_dict() for s in statistics],
    }


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> str:
    """A figure as a base64 PNG, closed."""
    fig.tight_layout()
    buffer = stdio.BytesIO()
    fig.savefig(buffer, format="png")
    _pyplot().close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _plot(name: str, reference: np.ndarray, current: np.ndarray) -> str:
    """Reference and current shares of one statistic's bins, as a base64 PNG."""
    plt = _pyplot()

    def shares(counts: np.ndarray) -> np.ndarray:
        total = counts.sum()
        return counts / total if total else counts * 0.0

    x = np.arange(len(reference))
    fig, ax = plt.subplots(figsize=(6, 2.4), dpi=80)
    ax.bar(x - 0.2, shares(reference), width=0.4, label="reference")
    ax.bar(x + 0.2, shares(current), width=0.4, label="current")
    ax.set_title(name, fontsize=9)
    ax.set_xlabel("bin", fontsize=8)
    ax.legend(fontsize=7)
    ax.tick_params(labelsize=7)
    return _png(fig)


def render_html(result: dict[str, Any], reference: Profile, current: Profile) -> str:
    ref = {k: h.counts for k, h in reference.histograms().items()}
    cur = {k: h.counts for k, h in current.histograms().items()}
    rows, plots = [], []
    for stat in result["statistics"]:
        name = stat["name"]
        verdict = "DRIFT" if stat["drifted"] else "ok"
        rows.append(
            f"<tr class='{verdict.lower()}'><td>{html.escape(name)}</td><td>{verdict}</td>"
            f"<td>{stat['distance']:.3f}</td><td>{stat['p_value']:.2e}</td>"
            f"<td>{_number(stat['psi'])}</td><td>{html.escape(json.dumps(stat['reference']))}</td>"
            f"<td>{html.escape(json.dumps(stat['current']))}</td></tr>"
        )
        if name in ref and name in cur:
            image = _plot(name, ref[name], cur[name])
            plots.append(f"<img alt='{html.escape(name)}' src='data:image/png;base64,{image}'>")
    title = "drift: " + (", ".join(result["drifted"]) if result["drifted"] else "none")
    section = result.get("performance")
    labelled = "" if section is None else _performance_html(section)
    if section is not None and section["degraded"]:
        title += f"; degraded in {len(section['degraded'])} window(s)"
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:2px 8px;text-align:left}}
tr.drift{{background:#fdd}}img{{margin:4px}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Reference: {html.escape(result["reference"]["source"])} ({result["reference"]["sequences"]}
sequences, {result["reference"]["events"]} events). Current: {html.escape(result["current"]["source"])}
({result["current"]["sequences"]} sequences, {result["current"]["events"]} events).
A statistic drifts when its Jensen-Shannon distance exceeds
{result["thresholds"]["max_distance"]} and the chi-square test on its effective sample
rejects equal distributions at {result["thresholds"]["alpha"]} (all statistics together).</p>
<table><tr><th>statistic</th><th>verdict</th><th>JS distance</th><th>p-value</th><th>PSI</th>
<th>reference</th><th>current</th></tr>
{"".join(rows)}
</table>
{"".join(plots)}
{labelled}
</body></html>
"""


def _performance_html(section: dict[str, Any]) -> str:
    """The delayed labels' windows: a table and the primary metric over time against the
    evaluation's value."""
    metric, reference = section["metric"], section["evaluation"].get(section["metric"])
    rows = "".join(
        f"<tr class='{'drift' if w['degraded'] else 'ok'}'><td>{w['start'][:16]}</td>"
        f"<td>{w['labels']}</td><td>{w['positives']}</td><td>{_number(w[metric])}</td>"
        f"<td>{_number(w['drop'])}</td><td>{_number(w['standard_error'])}</td>"
        f"<td>{'DEGRADED' if w['degraded'] else 'ok'}</td></tr>"
        for w in section["windows"]
    )
    return f"""<h2>Delayed labels: {html.escape(metric)} per {html.escape(section["window"])}</h2>
<p>Evaluation ({html.escape(str(section["evaluation_split"]))} split): {_number(reference)}.
Labels read {section["rows"]["read"]}, scored {section["rows"]["scored"]} (unknown class
{section["rows"]["unknown_class"]}, no event before the label
{section["rows"]["no_events_before"]}).</p>
<table><tr><th>window</th><th>labels</th><th>positives</th><th>{html.escape(metric)}</th>
<th>drop</th><th>standard error</th><th>verdict</th></tr>{rows}</table>
<img alt='{html.escape(metric)} per window' src='data:image/png;base64,{_metric_plot(section)}'>"""


def _metric_plot(section: dict[str, Any]) -> str:
    plt = _pyplot()

    metric = section["metric"]
    windows = section["windows"]
    values = [np.nan if w[metric] is None else w[metric] for w in windows]
    fig, ax = plt.subplots(figsize=(7, 2.6), dpi=80)
    ax.plot(range(len(windows)), values, marker="o", label="labelled window")
    reference = section["evaluation"].get(metric)
    if reference is not None:
        ax.axhline(reference, color="grey", linestyle="--", label="evaluation")
    ax.set_xticks(range(len(windows)), [w["start"][:10] for w in windows], rotation=45,
                  fontsize=6)  # fmt: skip
    ax.set_ylabel(metric, fontsize=8)
    ax.legend(fontsize=7)
    return _png(fig)


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def check_outputs(*paths: str) -> None:
    """Before any reading: each output's folder can be made and written, and the output is
    not a folder (the report must not be lost to a typo after the work)."""
    for path in map(Path, paths):
        if path.is_dir():
            raise MonitorError(f"{path}: is a folder; name a file to write the report to")
        path.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(path.parent, os.W_OK):
            raise MonitorError(f"{path.parent}: not writable")


def run(args: argparse.Namespace, params: Params) -> dict[str, Any]:
    check_outputs(args.report, args.html)
    if args.labels and args.shards:
        raise MonitorError(
            "--labels needs a model to score the labelled entities: name it with --model "
            "(or leave both out for the champion) instead of --shards"
        )
    manifest, scorer, against, run_id = _reference(args, params)
    labels = None
    if args.labels:
        assert scorer is not None
        labels = read_labels(str(args.labels), params, scorer)
    reference = manifest.reference
    if reference is None:
        raise MonitorError(
            f"{against}: its shard manifest holds no training profile (written before "
            "seqops profiled its training split); rebuild the shards (dvc repro shard) and "
            "retrain, or monitor against --shards of this version"
        )
    table = read_batch(str(args.events), params, manifest)
    sequences = encode(table, manifest.features, manifest.schema)
    if scorer is not None and reference.score is None:
        log.warning("%s carries no validation scores (trained before seqops kept them): "
                    "its scores are not compared", against)  # fmt: skip
    scored = scorer if reference.score is not None else None
    current = profile_batch(table, manifest, scored, sequences)
    if reference.contract:
        current.contract = batch_contract(table, params, manifest.schema)
    statistics = compare(reference, current, params.monitor)
    result = report(statistics, reference, current, params.monitor, against, args.events)
    if labels is not None and scorer is not None:
        result["performance"] = performance(
            scorer, sequences, labels, run_id, tracking_uri(), params.monitor
        )
        result["labels"] = str(args.labels)
        if result["performance"]["degraded"]:
            result["passed"] = False
    page = render_html(result, reference, current)
    io.write_json(args.report, result)
    with io.atomic_file(args.html) as out:
        out.write(page)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="seqops monitor", description=__doc__.split("\n")[0])
    parser.add_argument("--events", required=True, help="the new batch: a file or folder")
    against = parser.add_mutually_exclusive_group()
    against.add_argument(
        "--model", help="registered model whose training profile is the reference "
        "(default: models:/<register.model_name>@champion)",
    )  # fmt: skip
    against.add_argument("--shards", help="a shard folder whose manifest is the reference")
    parser.add_argument(
        "--labels", help="labels that arrived later (entity key, time, label columns as "
        "data.schema names them; Parquet or CSV): the model's metrics by window of time",
    )  # fmt: skip
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--report", default="reports/drift.json")
    parser.add_argument("--html", default="reports/drift.html")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        params = load_params(args.params)
        result = run(args, params)
    except (ConfigError, MonitorError, IngestError, LabelsError, ManifestError,
            ModelLoadError, StoreError, OSError, pa.ArrowException) as exc:  # fmt: skip
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception:  # 1 says drift, and only drift: anything else is its own status
        log.exception("monitor failed")
        return 3
    for stat in result["statistics"]:
        mark = "DRIFT" if stat["drifted"] else "ok   "
        print(f"{mark} {stat['name']:<28} distance {stat['distance']:.3f}  "
              f"p {stat['p_value']:.1e}  {stat['current']}")  # fmt: skip
    verdict = f"drift in {', '.join(result['drifted'])}" if result["drifted"] else "no drift"
    section = result.get("performance")
    if section is not None:
        for window in section["windows"]:
            mark = "WORSE" if window["degraded"] else "ok   "
            print(f"{mark} {window['start'][:16]}  {window['labels']:>6} labels  "
                  f"{section['metric']} {_number(window[section['metric']])}")  # fmt: skip
        worse = section["degraded"]
        verdict += f"; degraded in {len(worse)} window(s)" if worse else "; no degradation"
    print(f"monitor: {verdict} ({result['current']['sequences']} sequences); "
          f"{args.report}, {args.html}")  # fmt: skip
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
