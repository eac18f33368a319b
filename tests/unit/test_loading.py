"""What the loader accepts from an MLmodel before it builds a scorer: the listed artifacts and
the recorded model format (tests/integration/test_model_loading.py loads real logged models)."""

from __future__ import annotations

import pytest
import yaml

from seqcore.loading import (
    FILES_TAG,
    FORMAT_KEY,
    FORMAT_TAG,
    MODEL_FORMAT,
    SUPPORTED_FORMATS,
    ModelLoadError,
    _artifact_paths,
    _locate,
    _model_format,
    installed_version,
)

MLMODEL = """
flavors:
  python_function:
    artifacts:
      manifest: {path: artifacts/manifest.json, uri: /tmp/x/manifest.json}
      model_config: {path: artifacts/model_config.json, uri: /tmp/x/model_config.json}
      weights: {path: artifacts/weights.safetensors, uri: /tmp/x/weights.safetensors}
    loader_module: mlflow.pyfunc.loaders.code_model
metadata: {seqops_model_format: 1, seqops_version: 0.1.0, git_commit: abc}
"""


def _mlmodel(**metadata) -> dict:
    raw = yaml.safe_load(MLMODEL)
    raw["metadata"] = metadata
    return raw


def test_the_scorer_files_are_the_ones_the_mlmodel_lists_inside_the_model():
    assert _artifact_paths(yaml.safe_load(MLMODEL), "m") == {
        "weights": "artifacts/weights.safetensors",
        "model_config": "artifacts/model_config.json",
        "manifest": "artifacts/manifest.json",
    }
    for bad in ("../../etc/passwd", "/etc/passwd", "artifacts/../../x"):
        raw = yaml.safe_load(MLMODEL)
        raw["flavors"]["python_function"]["artifacts"]["weights"]["path"] = bad
        with pytest.raises(ModelLoadError, match="outside the model"):
            _artifact_paths(raw, "m")
    raw = yaml.safe_load(MLMODEL)
    del raw["flavors"]["python_function"]["artifacts"]["manifest"]
    with pytest.raises(ModelLoadError, match="does not list the artifacts .*not a seqops model"):
        _artifact_paths(raw, "m")


def test_the_recorded_format_must_be_one_this_code_reads():
    assert MODEL_FORMAT in SUPPORTED_FORMATS
    assert _model_format(_mlmodel(**{FORMAT_KEY: MODEL_FORMAT}), {}, "m") == MODEL_FORMAT
    with pytest.raises(ModelLoadError) as newer:
        _model_format(_mlmodel(**{FORMAT_KEY: 99, "seqops_version": "9.0"}), {}, "models:/x/3")
    message = str(newer.value)
    assert message.startswith("models:/x/3: seqops model format 99 (logged by seqops 9.0)")
    assert f"this seqops ({installed_version()}) reads model format 1" in message
    assert "again with this version, or install seqops 9.0" in message
    for odd in ("1", True, 1.0):  # a format is an integer, not something that compares equal
        with pytest.raises(ModelLoadError, match="seqops model format"):
            _model_format(_mlmodel(**{FORMAT_KEY: odd}), {}, "m")


def test_a_model_without_a_format_loads_only_where_a_seal_recorded_one():
    without = _mlmodel(seqops_version="0.0.1")
    with pytest.raises(ModelLoadError, match="no seqops model format recorded .*registry seal"):
        _model_format(without, {}, "m")
    with pytest.raises(ModelLoadError, match="no seqops model format recorded"):
        _model_format({"flavors": {}}, {FILES_TAG: "{}"}, "m")
    assert _model_format(without, {FORMAT_TAG: "1"}, "m") == 1
    # what the MLmodel records wins over a seal's record
    with pytest.raises(ModelLoadError, match="format 7"):
        _model_format(_mlmodel(**{FORMAT_KEY: 7}), {FORMAT_TAG: "1"}, "m")


def test_only_uris_that_lead_to_a_record_are_loaded():
    for uri in ("file:///tmp/model", "/tmp/model", "s3://bucket/model", "models:/name"):
        with pytest.raises(ModelLoadError, match="carries no record of its files"):
            _locate(None, uri)  # refused before the store is asked anything
