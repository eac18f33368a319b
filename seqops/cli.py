"""``seqops``: one command for the whole tool (click), above ``pipelines`` and ``serving``.

    seqops --version
    seqops run STAGE [ARGS]     a pipeline stage, as dvc.yaml runs it (python -m pipelines.STAGE)
    seqops tune [ARGS]          hyperparameter search on Ray Tune; writes the best train params
    seqops serve [ARGS]         online scoring over HTTP (python -m serving.cli serve)
    seqops score [ARGS]         batch scoring of a Parquet dataset (python -m serving.batch)
    seqops monitor [ARGS]       drift of a new events batch against the model's training profile
    seqops registry ACTION      review and promote registered versions (list, compare, promote,
                                rollback, seal, history)
    seqops metrics diff         dvc metrics diff against the champion's commit or experiment

Each subcommand hands its arguments to the module that owns them, so ``seqops serve --help``
is that module's own help, every argument documented once; the ``python -m`` forms stay
valid aliases. This package is the one layer that may import both ``pipelines`` and
``serving`` (docs/architecture.md §8).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

import click

STAGES = ("ingest", "validate", "shard", "train", "evaluate", "register")
PASS_THROUGH = {"ignore_unknown_options": True, "allow_interspersed_args": False}


def _version() -> str:
    try:
        return version("seqops")
    except PackageNotFoundError:  # a checkout run without installing it
        return "unknown (not installed)"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(_version(), "--version", "-V", prog_name="seqops")
def cli() -> None:
    """seqops: events table -> validated shards -> trained model -> registry -> serving."""


def _args(params: Sequence[str]) -> list[str]:
    return [str(p) for p in params]


@cli.command(context_settings=PASS_THROUGH, add_help_option=False)
@click.argument("stage", type=click.Choice(STAGES))
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def run(stage: str, args: Sequence[str]) -> None:
    """Run one pipeline stage (its arguments: seqops run STAGE --help)."""
    module = importlib.import_module(f"pipelines.{stage}")
    sys.exit(module.main(_args(args)))


@cli.command(context_settings=PASS_THROUGH, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def tune(args: Sequence[str]) -> None:
    """Search train params on Ray Tune over the shards (seqops tune --help)."""
    from pipelines.tune import main as tune_main

    sys.exit(tune_main(_args(args)))


@cli.command(context_settings=PASS_THROUGH, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def serve(args: Sequence[str]) -> None:
    """Serve a registered model over HTTP until Ctrl-C (seqops serve --help)."""
    from serving.cli import main as serve_main

    sys.exit(serve_main(["serve", *_args(args)]))


@cli.command(context_settings=PASS_THROUGH, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def score(args: Sequence[str]) -> None:
    """Batch-score a Parquet events dataset (seqops score --help)."""
    from serving.batch import main as batch_main

    sys.exit(batch_main(_args(args)))


@cli.command(context_settings=PASS_THROUGH, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def monitor(args: Sequence[str]) -> None:
    """Drift of a new events batch against the model's training profile (seqops monitor --help)."""
    from pipelines.monitor import main as monitor_main

    sys.exit(monitor_main(_args(args)))


@cli.command(context_settings=PASS_THROUGH, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def registry(args: Sequence[str]) -> None:
    """Review and promote registered versions (seqops registry --help)."""
    from pipelines.cli import main as registry_main

    # --params is the registry command's own option, accepted before or after the action.
    params = list(_args(args))
    lead: list[str] = []
    if "--params" in params:
        at = params.index("--params")
        lead, params = params[at : at + 2], params[:at] + params[at + 2 :]
    sys.exit(registry_main([*lead, "registry", *params]))


@cli.group()
def metrics() -> None:
    """The pipeline's DVC metrics next to a registered version's."""


@metrics.command("diff", context_settings=PASS_THROUGH)
@click.option(
    "--against",
    default="champion",
    show_default=True,
    help="the registered version to compare with: an alias or a version number",
)
@click.option("--model", default=None, help="registered model name [default: register.model_name]")
@click.option("--params", "params_file", default="params.yaml", show_default=True)
@click.argument("dvc_args", nargs=-1, type=click.UNPROCESSED)
def metrics_diff(
    against: str, model: str | None, params_file: str, dvc_args: Sequence[str]
) -> None:
    """`dvc metrics diff` between the workspace and the commit (or DVC experiment) that
    trained a registered version, the champion by default. Arguments after the options go to
    dvc (e.g. --all, --md)."""
    import shutil
    import subprocess
    from pathlib import Path

    from pipelines.cli import open_registry
    from seqcore.config import ConfigError
    from seqcore.progress import quiet
    from seqops.lineage import version_origin

    quiet()
    try:
        origin = version_origin(open_registry(model, params_file), against)
    except (ConfigError, LookupError) as exc:
        click.echo(f"seqops metrics diff: {exc}", err=True)
        sys.exit(2)
    dvc = shutil.which("dvc") or str(Path(sys.executable).with_name("dvc"))
    command = [dvc, "metrics", "diff", origin.revision, *_args(dvc_args)]
    click.echo(f"{origin.how}: {' '.join(['dvc', *command[1:]])}", err=True)
    if origin.warning:
        click.echo(f"note: {origin.warning}", err=True)
    sys.exit(subprocess.run(command).returncode)


def main(argv: Sequence[str] | None = None) -> int:
    """The console script's entry; returns the exit code instead of exiting (for tests)."""
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="seqops")
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0


if __name__ == "__main__":  # python -m seqops.cli, as python -m seqops
    sys.exit(main())
