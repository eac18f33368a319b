"""``seqops registry``: the command line for people who review and promote models (the
``seqops`` command, ``seqops/cli.py``, hands ``registry ...`` to :func:`main`).

    seqops registry list                       versions, aliases, key metrics, gate decisions
    seqops registry compare 3 4                two versions side by side (metrics, data, code)
    seqops registry promote 4 --reason "..."   move the champion alias (recorded); a version
                                               the gate did not pass also needs --override-gate
    seqops registry rollback --reason "..."    champion back to the previous champion
    seqops registry seal 4 --reason "..."      record the sha256 of a version's files (audited),
                                               for a version registered without that record
    seqops registry history                    the audited history (promotions, overrides, seals)

Everything goes through the MLflow registry (``MLFLOW_TRACKING_URI``, else the repository's
SQLite store), so the MLflow UI shows the same state. The model name defaults to
``register.model_name`` in params.yaml.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipelines.config import load_params
from pipelines.registry import Registry, RegistryError, gate_passed
from seqcore.config import ConfigError
from seqcore.loading import ModelLoadError
from seqcore.progress import quiet


def _print_table(rows: Sequence[dict[str, Any]]) -> None:
    if not rows:
        print("(no versions)")
        return
    columns = list(dict.fromkeys(k for row in rows for k in row))
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns))


def _registry(args: argparse.Namespace) -> Registry:
    return open_registry(args.model, args.params)


def open_registry(model: str | None, params_file: str = "params.yaml") -> Registry:
    """The registered model ``model`` (default: ``register.model_name`` of the params file)
    in the project's store; :class:`RegistryError` when that store does not exist yet."""
    from mlflow.tracking import MlflowClient

    from pipelines.tracking import configure
    from seqcore.loading import sqlite_path, tracking_uri

    name = model or load_params(params_file).register.model_name
    # Reading a store that does not exist would create an empty one here and report "no
    # such model"; the useful answer is where the store was expected.
    db = sqlite_path(tracking_uri(Path(".")))
    if db is not None and not db.exists():
        raise RegistryError(
            f"no MLflow store at {db}: run the pipeline first (make pipeline, or dvc repro), "
            "run this from the repository, or set MLFLOW_TRACKING_URI to the team's store"
        )
    return Registry(MlflowClient(configure(Path("."))), name)


def registry_command(args: argparse.Namespace) -> int:
    registry = _registry(args)
    if args.action == "list":
        registry.require()
        champion = registry.alias("champion")
        print(f"model {registry.name}: champion v{champion.version if champion else '-'}")
        _print_table(registry.table())
    elif args.action == "compare":
        rows = registry.compare(args.a, args.b)
        _print_table([{"field": k, f"v{args.a}": a, f"v{args.b}": b} for k, a, b in rows])
    elif args.action == "promote":
        entry = registry.promote(args.version, args.reason, override_gate=args.override_gate)
        print(
            f"champion of {registry.name}: v{entry['previous'] or '-'} -> v{entry['version']} ({entry['by']}, {entry['at']})"
        )
        if "gate_override" in entry:
            print(f"gate overridden: its decision was {entry['gate_override']!r} (recorded)")
        elif args.override_gate and gate_passed(
            registry.version(args.version).tags.get("gate.decision")
        ):
            print("the gate passed this version: --override-gate had nothing to override")
    elif args.action == "rollback":
        entry = registry.rollback(args.reason)
        print(
            f"rolled back {registry.name}: v{entry['previous']} -> v{entry['version']} ({entry['by']}, {entry['at']})"
        )
    elif args.action == "seal":
        entry = registry.seal(args.version, args.reason, replace=args.replace)
        print(f"sealed {registry.name} v{entry['version']} ({entry['by']}, {entry['at']}):")
        for path, digest in entry["files"].items():
            print(f"  {digest}  {path}")
    elif args.action == "history":
        registry.require()
        print(json.dumps(registry.history(), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seqops", description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml", help="params.yaml for defaults")
    commands = parser.add_subparsers(dest="command", required=True)
    reg = commands.add_parser("registry", help="review and promote registered versions")
    reg.add_argument("--model", help="registered model name (default: register.model_name)")
    actions = reg.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="versions with aliases, key metrics and gate decisions")
    compare = actions.add_parser("compare", help="two versions side by side")
    compare.add_argument("a", type=int)
    compare.add_argument("b", type=int)
    promote = actions.add_parser("promote", help="make a version the champion")
    promote.add_argument("version", type=int)
    promote.add_argument("--reason", required=True, help="why (recorded in the registry)")
    promote.add_argument(
        "--override-gate",
        action="store_true",
        help="promote a version the gate rejected or never evaluated (recorded with --reason)",
    )
    rollback = actions.add_parser("rollback", help="champion back to the previous champion")
    rollback.add_argument("--reason", required=True)
    seal = actions.add_parser(
        "seal", help="record the sha256 of a version's files, after checking that they load"
    )
    seal.add_argument("version", type=int)
    seal.add_argument("--reason", required=True, help="why these files are trusted (recorded)")
    seal.add_argument(
        "--replace", action="store_true", help="replace a record the version already has"
    )
    actions.add_parser("history", help="the audited history: promotions, overrides, seals")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet()
    try:
        if args.command == "registry":
            return registry_command(args)
    except (RegistryError, ConfigError, ModelLoadError) as exc:
        print(f"seqops: {exc}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
