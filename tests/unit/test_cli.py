"""The one ``seqops`` command (seqops/cli.py): version, subcommands, hand-over of arguments."""

from __future__ import annotations

import socket

import pytest

from seqops.cli import STAGES, main


def test_version_and_help_name_every_subcommand(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("seqops, version ")
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("run", "serve", "score", "registry"):
        assert f"  {command} " in out


@pytest.mark.parametrize("stage", STAGES)
def test_run_hands_a_stage_its_own_arguments(stage, capsys):
    assert main(["run", stage, "--help"]) == 0
    assert "--params" in capsys.readouterr().out


def test_an_unknown_stage_is_one_clear_error(capsys):
    assert main(["run", "trian"]) == 2
    assert "'trian' is not one of 'ingest'" in capsys.readouterr().err


def test_serve_and_registry_errors_come_back_as_exit_codes(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert main(["serve", "--model-name", "m", "--port", str(port)]) == 2
    assert "address already in use" in capsys.readouterr().err
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    code = main(["registry", "--params", "params.yaml", "--model", "nothing-here", "list"])
    assert code == 2
    assert f"no MLflow store at {tmp_path / 'mlflow.db'}: run the pipeline first" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "mlflow.db").exists()  # asking created nothing
    from mlflow.tracking import MlflowClient

    MlflowClient(store).search_experiments()  # the store exists, empty
    code = main(["registry", "--params", "params.yaml", "--model", "nothing-here", "list"])
    assert code == 2
    assert "registered model 'nothing-here' not found" in capsys.readouterr().err


def test_no_cluster_at_ray_address_is_one_line_at_once(monkeypatch):
    from seqcore.ray_connect import ClusterUnreachable, check_ray_address, gcs_unreachable
    from serving.cli import _connect_ray

    with socket.socket() as holder:  # a port that was just free and is now closed
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
    assert gcs_unreachable(f"127.0.0.1:{port}") == "connection refused"
    assert gcs_unreachable(f"ray://127.0.0.1:{port}") == "connection refused"
    assert gcs_unreachable("auto") is None  # left to ray.init, which fails fast for it
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        check_ray_address(f"127.0.0.1:{listening.getsockname()[1]}")
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    import ray

    # As in a fresh command, even when this test process already holds a Ray session.
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    with pytest.raises(ClusterUnreachable, match=rf"RAY_ADDRESS=127.0.0.1:{port} \(connection"):
        _connect_ray()


def test_the_dashboard_takes_the_next_free_port():
    from serving.cli import free_port

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        assert free_port("127.0.0.1", taken) > taken


@pytest.mark.parametrize("module", ["seqops", "seqops.cli"])
def test_both_module_forms_run_the_command(module):
    """``python -m seqops.cli registry promote ...`` once did nothing and exited 0."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", module, "--version"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stdout.startswith("seqops, version"), done
