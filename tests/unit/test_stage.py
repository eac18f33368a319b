"""The stages' shared command line: exit codes and one-line messages that dvc repro shows."""

from __future__ import annotations

import argparse

import pytest

from pipelines.config import Params
from pipelines.stage import stage_main
from seqcore.loading import ModelLoadError
from seqcore.manifest import ManifestError
from tests.conftest import REPO

PARAMS = str(REPO / "params.yaml")


class _BadInput(ValueError):
    pass


class _Failed(RuntimeError):
    pass


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="out")


def _main(body, argv: list[str]) -> int:
    return stage_main(
        "demo", _arguments, body, argv, doc="The demo stage.\n\nMore.",
        input_errors=(_BadInput,), failures=(_Failed,),
    )  # fmt: skip


def test_success_passes_params_and_arguments_and_returns_the_body_code():
    seen: dict[str, object] = {}

    def body(params: Params, args: argparse.Namespace) -> int:
        seen.update(params=params, out=args.out)
        return 1  # a failure the stage reports itself, e.g. a blocking data check

    assert _main(body, ["--params", PARAMS, "--out", "x"]) == 1
    assert isinstance(seen["params"], Params) and seen["out"] == "x"


@pytest.mark.parametrize(
    ("error", "code", "message"),
    [
        (FileNotFoundError("events.parquet not found"), 2, "demo: events.parquet not found"),
        (_BadInput("column 'x' missing"), 2, "demo: column 'x' missing"),
        (_Failed("no training examples"), 1, "demo: failed: no training examples"),
        (
            ManifestError("shards/manifest.json: shard format 9"),
            2,
            "demo: shards/manifest.json: shard format 9",
        ),
        (ModelLoadError("model models:/m not found"), 2, "demo: model models:/m not found"),
    ],
)
def test_errors_become_exit_codes_with_one_line_on_stderr(error, code, message, capsys):
    def body(params: Params, args: argparse.Namespace) -> int:
        raise error

    assert _main(body, ["--params", PARAMS]) == code
    captured = capsys.readouterr()
    assert captured.err.strip() == message and not captured.out


def test_bad_params_exit_2_before_the_stage_runs(tmp_path, capsys):
    def body(params: Params, args: argparse.Namespace) -> int:
        raise AssertionError("must not run")

    assert _main(body, ["--params", str(tmp_path / "none.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("demo: params:") and "none.yaml" in err


def test_other_errors_are_not_hidden():
    def body(params: Params, args: argparse.Namespace) -> int:
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        _main(body, ["--params", PARAMS])


def test_help_shows_the_module_docstring_summary_and_params(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _main(lambda params, args: 0, ["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "python -m pipelines.demo" in out and "The demo stage." in out and "--params" in out
    assert "More." not in out
