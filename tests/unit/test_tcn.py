"""The temporal convolutional encoder's own behaviour: its receptive field, its config and the
long-range learning it is for (padding, causality, order, losses and I/O are tested with every
encoder in tests/unit/test_models.py)."""

from __future__ import annotations

import logging

import pytest
import torch

from pipelines.config import params_from_dict
from pipelines.params.train import TrainConfig, check_receptive_field
from seqcore.config import ConfigError
from seqmodels import ModelConfig, ModelConfigError, ModelSpec
from seqmodels.config import INCEPTION_DEPTH, INCEPTION_KERNELS
from tests.unit.test_models import N_NUMERIC, VOCABS, make_model


@pytest.mark.parametrize(
    ("kernel_size", "num_layers", "field"), [(2, 1, 3), (3, 2, 13), (3, 8, 1021), (5, 7, 1017)]
)
def test_receptive_field_formula(kernel_size, num_layers, field):
    spec = ModelSpec(architecture="tcn", kernel_size=kernel_size, num_layers=num_layers)
    assert spec.receptive_field == field == 1 + 2 * (kernel_size - 1) * (2**num_layers - 1)
    assert ModelSpec(architecture="lstm").receptive_field is None


def reach(model, total: int, at: int) -> list[int]:
    """The input steps whose numeric features change the encoder's output at step ``at``."""
    gen = torch.Generator().manual_seed(0)
    cat = torch.stack([torch.randint(1, v, (total,), generator=gen) for v in VOCABS], -1)
    num = torch.randn(total, N_NUMERIC, generator=gen).requires_grad_(True)
    steps = model.encode(cat[None], num[None], torch.tensor([total])).steps  # (1, T, H)
    # A random direction: the plain sum of a LayerNorm's output is constant at initialisation.
    (steps[0, at] * torch.randn(steps.shape[-1], generator=gen)).sum().backward()
    assert num.grad is not None
    return (num.grad.abs().sum(-1) > 0).nonzero().flatten().tolist()


@pytest.mark.parametrize(("kernel_size", "num_layers"), [(2, 3), (3, 3), (5, 2)])
def test_receptive_field_is_what_an_output_reads(kernel_size, num_layers):
    model = make_model("tcn", "forecast", kernel_size=kernel_size, num_layers=num_layers)
    field = model.config.receptive_field
    assert model.encoder.receptive_field == field
    total = field + 10
    assert reach(model, total, at=total - 1) == list(range(total - field, total))
    # Bidirectional (odd kernel: centred): as many later steps as earlier ones.
    model = make_model(
        "tcn", "classify", causal=False, kernel_size=kernel_size, num_layers=num_layers
    )
    if kernel_size % 2:
        half = (field - 1) // 2
        assert reach(model, total + field, at=field) == list(range(field - half, field + half + 1))


@pytest.mark.parametrize("num_layers", [1, 2])
def test_inception_receptive_field_is_what_an_output_reads(num_layers):
    model = make_model("tcn", "forecast", block="inception", num_layers=num_layers)
    field = model.config.receptive_field
    assert field == 1 + (max(INCEPTION_KERNELS) - 1) * num_layers
    total = field + 10
    assert reach(model, total, at=total - 1) == list(range(total - field, total))
    model = make_model("tcn", "classify", block="inception", causal=False, num_layers=num_layers)
    half = (field - 1) // 2  # odd widths: centred
    assert reach(model, total + field, at=field) == list(range(field - half, field + half + 1))


def test_inception_block_config():
    spec = ModelSpec(architecture="tcn", block="inception")
    assert spec.depth_for(10) == spec.depth_for(5000) == INCEPTION_DEPTH
    config = ModelConfig.from_spec(spec, vocab_sizes=VOCABS, n_numeric=N_NUMERIC, max_len=1460)
    assert config.num_layers == INCEPTION_DEPTH and config.to_dict()["block"] == "inception"
    assert ModelConfig.from_dict(config.to_dict()) == config
    # Nor does a dilated TCN's (code from before the key must load it), nor other encoders'.
    dilated = ModelConfig(architecture="tcn", vocab_sizes=VOCABS, n_numeric=1)
    assert "block" not in dilated.to_dict() and dilated.block == "dilated"
    assert ModelConfig.from_dict(dilated.to_dict()) == dilated
    assert "block" not in ModelConfig(vocab_sizes=VOCABS, n_numeric=1).to_dict()
    with pytest.raises(ConfigError, match=r"train\.model\.hidden_size=30: block: inception needs"):
        params_from_dict(
            {"train": {"model": {"architecture": "tcn", "block": "inception", "hidden_size": 30}}}
        )
    note = check_receptive_field(
        TrainConfig(model=ModelSpec(architecture="tcn", block="inception", num_layers=2)), 251
    )
    assert note is not None and "77 events (block=inception, num_layers=2)" in note
    assert "num_layers=7 covers the window (1 + 38 num_layers)" in note


def test_periodic_numeric_embedding_is_stored_only_when_chosen():
    sizes = {"vocab_sizes": VOCABS, "n_numeric": N_NUMERIC}
    linear = ModelConfig(**sizes)
    assert "numeric_embedding" not in linear.to_dict()
    periodic = ModelConfig(**sizes, numeric_embedding="periodic")
    assert periodic.to_dict()["numeric_embedding"] == "periodic"
    assert ModelConfig.from_dict(periodic.to_dict()) == periodic
    model = make_model("lstm", "classify", numeric_embedding="periodic")
    width = model.encoder.embed.project.in_features
    assert width == len(VOCABS) * 4 + N_NUMERIC * 4  # embedding_dim 4 per numeric feature too
    # Without numeric features there is nothing to code.
    no_numeric = make_model("gru", "classify", n_numeric=0, numeric_embedding="periodic")
    assert no_numeric.encoder.embed.numeric is None


def test_config_of_the_tcn():
    assert ModelSpec(architecture="tcn").causal_for("classify")  # default: causal
    assert ModelSpec(architecture="tcn").resolved_pooling == "mean"
    ModelSpec(architecture="tcn", causal=False).check_task("classify")
    with pytest.raises(ModelConfigError, match="model.causal=False"):
        ModelSpec(architecture="tcn", causal=False).check_task("forecast")
    for bad in (1, True, 2.5):
        with pytest.raises(ModelConfigError, match=r"model\.kernel_size="):
            ModelSpec(architecture="tcn", kernel_size=bad)
    with pytest.raises(ModelConfigError, match=r"model\.num_layers=17: a tcn takes at most 16"):
        ModelSpec(architecture="tcn", num_layers=17)
    assert ModelSpec(architecture="lstm", num_layers=17).receptive_field is None
    with pytest.raises(ConfigError, match=r"train\.model\.kernel_size=1: must be >= 2"):
        params_from_dict({"train": {"model": {"architecture": "tcn", "kernel_size": 1}}})


def test_kernel_size_is_stored_where_it_is_read():
    # Other encoders' stored configs stay as they were (test_models' STORED_CONFIG); a TCN's
    # always names its kernel, and every config round-trips.
    sizes = {"vocab_sizes": VOCABS, "n_numeric": N_NUMERIC}
    for spec, written in [
        (ModelSpec(architecture="lstm"), False),
        (ModelSpec(architecture="lstm", kernel_size=5), True),
        (ModelSpec(architecture="tcn"), True),
    ]:
        config = ModelConfig.from_spec(spec, **sizes)
        assert ("kernel_size" in config.to_dict()) is written
        assert ModelConfig.from_dict(config.to_dict()) == config
        assert ModelSpec.from_dict(spec.to_dict()) == spec


def test_a_receptive_field_shorter_than_the_window_is_a_note(caplog):
    short = TrainConfig(model=ModelSpec(architecture="tcn", num_layers=2))
    with caplog.at_level(logging.INFO, logger="seqops.train"):
        note = check_receptive_field(short, window_len=256)
    assert note is not None and "receptive field is 13 events" in note
    assert "num_layers=7 covers the window" in note  # 6 reach 253 events, 7 reach 509
    assert note in caplog.text
    assert check_receptive_field(short, window_len=13) is None
    assert check_receptive_field(TrainConfig(), window_len=256) is None  # an LSTM
    deep = TrainConfig(model=ModelSpec(architecture="tcn", num_layers=10))  # dilation 512
    assert "num_layers=7 already covers" in (check_receptive_field(deep, window_len=256) or "")
    assert check_receptive_field(deep, window_len=1024) is None


# --------------------------------------------------------------------------- long range


def early_pattern_batch(size: int, seed: int) -> tuple[torch.Tensor, ...]:
    """400-500 numeric steps; the class shows only in the first 32 (feature 0 shifted by +-2)."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(400, 501, (size,), generator=gen)
    total = int(lengths.max())
    cat = torch.stack([torch.randint(2, v, (size, total), generator=gen) for v in VOCABS], -1)
    num = torch.randn(size, total, N_NUMERIC, generator=gen)
    labels = torch.randint(0, 2, (size,), generator=gen)
    num[:, :32, 0] += 2.0 * (2 * labels[:, None] - 1)
    return cat, num, lengths, labels


def test_tcn_learns_from_the_start_of_a_long_sequence():
    # pooling="last": only the last real step (368-500 steps after the pattern) is read, so
    # held-out accuracy needs a receptive field (1017) that reaches back to the start. Mean
    # pooling would let steps near the start answer locally.
    model = make_model(
        "tcn", "classify", hidden_size=16, kernel_size=5, num_layers=7, dropout=0.0, pooling="last"
    ).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(50):
        cat, num, lengths, labels = early_pattern_batch(32, seed=100 + step)
        optimizer.zero_grad()
        model.loss(model(cat, num, lengths), labels, lengths).backward()
        optimizer.step()
    model.eval()
    cat, num, lengths, labels = early_pattern_batch(256, seed=1)
    with torch.no_grad():
        accuracy = (model(cat, num, lengths).argmax(-1) == labels).float().mean()
    assert accuracy >= 0.9
