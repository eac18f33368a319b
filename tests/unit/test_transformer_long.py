"""The long-context transformer: SDPA blocks that load today's weights, rotary positions, memory.

* Compatibility: the weights of the transformer before SDPA (``nn.TransformerEncoder``, kept in
  ``benchmarks/long_context.py`` as the benchmark's baseline) load with ``strict=True`` and give
  the same outputs, causal and bidirectional, with padding; a seed gives the same initial
  weights.
* Attention: no (T, T) or (B, heads, T, T) mask is passed to SDPA, no dropout outside CUDA
  training, and on CPU the flash kernel runs (not the reference kernel that builds the scores).
* Rotary: padding invariance, causality, order, windows longer than ``max_len``, config checks.
* Memory: a training step at 4,000 steps needs far less than one layer's score matrix.

Small fp32 models; pads hold garbage (out-of-range ids, NaN, 1e6), as in test_models.py.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from benchmarks.long_context import legacy_encoder_class
from seqmodels import ModelConfig, ModelConfigError, ModelSpec, SequenceModel, build_model
from seqmodels import transformer as transformer_module
from seqmodels.transformer import TransformerEncoder, apply_rotary, rotary_angles

VOCABS = (7, 5)
N_NUMERIC = 3
TOL = 1e-5


def config(task: str = "classify", **extra: object) -> ModelConfig:
    settings: dict[str, object] = {
        "architecture": "transformer", "task": task, "vocab_sizes": VOCABS,
        "n_numeric": N_NUMERIC, "embedding_dim": 4, "hidden_size": 16, "num_layers": 2,
        "dropout": 0.1, "num_heads": 2, "ffn_size": 32, "max_len": 32, "next_event_vocab": 7,
        "horizon": 2,
    }  # fmt: skip
    settings.update(extra)
    return ModelConfig.from_dict(settings)


def make_model(task: str = "classify", seed: int = 0, **extra: object) -> SequenceModel:
    torch.manual_seed(seed)
    return build_model(config(task, **extra)).eval()


def events(length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    cat = torch.stack([torch.randint(1, v, (length,), generator=gen) for v in VOCABS], dim=-1)
    return cat, torch.randn(length, N_NUMERIC, generator=gen)


def pad_batch(
    seqs: list[tuple[torch.Tensor, torch.Tensor]], total: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad to ``total`` steps with garbage in the pads; returns (cat, num, lengths)."""
    gen = torch.Generator().manual_seed(seed)
    cat = torch.randint(-3, 99, (len(seqs), total, len(VOCABS)), generator=gen)
    num = torch.randn(len(seqs), total, N_NUMERIC, generator=gen) * 1e6
    num[:, ::2, 0] = float("nan")
    for i, (c, n) in enumerate(seqs):
        cat[i, : len(c)], num[i, : len(c)] = c, n
    return cat, num, torch.tensor([len(c) for c, _ in seqs])


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


SEQS = [events(n, seed) for seed, n in enumerate((5, 1, 9, 3, 20))]

# --------------------------------------------------------------------------- compatibility


@pytest.mark.parametrize("positions", ["learned", "sinusoidal"])
@pytest.mark.parametrize("causal", [True, False])
@torch.no_grad()
def test_weights_of_the_nn_transformer_encoder_load_and_give_the_same_outputs(causal, positions):
    cfg = config(causal=causal, positions=positions)
    torch.manual_seed(1)
    legacy = legacy_encoder_class()(cfg).eval()
    torch.manual_seed(2)  # other weights, until the legacy ones are loaded
    encoder = TransformerEncoder(cfg).eval()
    encoder.load_state_dict(legacy.state_dict(), strict=True)
    batch = pad_batch(SEQS, total=24)
    mask = torch.arange(24) < batch[2][:, None]
    for grad in (False, True):  # eval without grad takes nn.TransformerEncoder's fast path
        with torch.set_grad_enabled(grad):
            ours, theirs = encoder(*batch), legacy(*batch)
        assert max_diff(ours.steps[mask], theirs.steps[mask]) <= TOL
        assert max_diff(ours.pooled, theirs.pooled) <= TOL
        assert (ours.steps[~mask] == 0).all()


def test_a_seed_gives_the_weights_the_nn_transformer_encoder_started_from():
    cfg = config()
    torch.manual_seed(3)
    legacy = legacy_encoder_class()(cfg).state_dict()
    torch.manual_seed(3)
    ours = TransformerEncoder(cfg).state_dict()
    assert list(ours) == list(legacy)
    assert all(torch.equal(ours[k], legacy[k]) for k in legacy)


# --------------------------------------------------------------------------- attention calls


@pytest.mark.parametrize(("task", "causal"), [("next_event", True), ("classify", False)])
def test_sdpa_gets_no_square_mask_and_no_dropout_on_cpu(monkeypatch, task, causal):
    calls: list[dict[str, object]] = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, **kwargs):
        mask = None if attn_mask is None else tuple(attn_mask.shape)
        calls.append({"mask": mask, "dropout": dropout_p, "causal": is_causal})
        return sdpa(
            q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, **kwargs
        )

    monkeypatch.setattr(transformer_module.F, "scaled_dot_product_attention", spy)
    model = make_model(task, positions="rotary").train()  # training: dropout would apply
    cat, num, lengths = pad_batch(SEQS, total=24)
    model(cat, num, lengths).sum().backward()
    batch, total = cat.shape[:2]
    expected_mask = None if causal else (batch, 1, 1, total)
    assert calls == [{"mask": expected_mask, "dropout": 0.0, "causal": causal}] * 2  # 2 layers
    calls.clear()
    model(cat[4:, :20], num[4:, :20], lengths[4:])  # no padding: no mask either way
    assert calls[0]["mask"] is None


@pytest.mark.parametrize("task", ["next_event", "classify"])
def test_cpu_training_runs_the_flash_kernel_not_the_reference_one(task):
    from torch.profiler import ProfilerActivity, profile

    model = make_model(task, positions="rotary").train()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        model(*pad_batch(SEQS, total=24)).sum().backward()
    ops = {e.key for e in prof.key_averages() if "scaled_dot_product" in e.key}
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in ops
    assert "aten::_scaled_dot_product_flash_attention_for_cpu_backward" in ops
    assert not any("math" in op for op in ops)


# --------------------------------------------------------------------------- rotary

ROTARY_VARIANTS = [
    ("classify", {}),  # bidirectional, mean pooling: the key mask path
    ("classify", {"pooling": "last", "causal": True}),
    ("next_event", {}),
    ("forecast", {}),
]


@pytest.mark.parametrize(("task", "extra"), ROTARY_VARIANTS)
@torch.no_grad()
def test_rotary_padding_never_changes_a_result(task, extra):
    model = make_model(task, positions="rotary", **extra)
    batch = model(*pad_batch(SEQS, total=20))
    longer = model(*pad_batch(SEQS, total=40, seed=3))  # past max_len=32: rotary allows it
    for i, (cat, num) in enumerate(SEQS):
        n = len(cat)
        alone = model(cat[None], num[None], torch.tensor([n]))[0]
        assert torch.isfinite(alone).all()
        if task == "classify":
            assert max_diff(batch[i], alone) <= TOL and max_diff(longer[i], alone) <= TOL
        else:
            assert max_diff(batch[i, :n], alone) <= TOL and max_diff(longer[i, :n], alone) <= TOL


@pytest.mark.parametrize("task", ["next_event", "forecast"])
@torch.no_grad()
def test_rotary_causal_output_at_t_ignores_later_steps(task):
    model = make_model(task, positions="rotary")
    cat, num = events(12, seed=4)
    out = model(cat[None], num[None], torch.tensor([12]))[0]
    cat2, num2 = cat.clone(), num.clone()
    cat2[7:], num2[7:] = 1, num2[7:] * -3.0 + 5.0
    changed = model(cat2[None], num2[None], torch.tensor([12]))[0]
    assert max_diff(changed[:7], out[:7]) <= TOL
    assert max_diff(changed[7:], out[7:]) > 1e-4


@torch.no_grad()
def test_rotary_bidirectional_reads_later_steps_and_order():
    model = make_model("classify", positions="rotary")
    assert not model.config.resolved_causal
    cat, num = events(10, seed=5)
    lengths = torch.tensor([10])
    out = model(cat[None], num[None], lengths)
    later = cat.clone()
    later[8:] = 1
    assert max_diff(model(later[None], num[None], lengths), out) > 1e-4
    # Attention alone is blind to order; the rotation is what tells a reversed sequence apart.
    assert max_diff(model(cat.flip(0)[None], num.flip(0)[None], lengths), out) > 1e-4


def test_rotary_scores_depend_on_the_distance_between_steps_only():
    head_dim, total = 8, 50
    cos, sin = rotary_angles(total, head_dim)
    q, k = torch.randn(head_dim), torch.randn(head_dim)
    spread = q.expand(1, 1, total, head_dim), k.expand(1, 1, total, head_dim)
    rq, rk = (apply_rotary(t, (cos, sin))[0, 0] for t in spread)  # (T, d) each
    scores = rq @ rk.T  # scores[i, j]: q at position i, k at position j
    for offset in (0, 3, 17):
        diagonal = torch.diagonal(scores, offset=offset)
        assert max_diff(diagonal, diagonal[0].expand_as(diagonal)) <= 1e-4


@torch.no_grad()
def test_rotary_scores_windows_longer_than_max_len_where_learned_refuses():
    rotary = make_model("next_event", positions="rotary", max_len=16)
    cat, num, lengths = pad_batch([events(300, seed=6), events(170, seed=7)], total=300)
    out = rotary(cat, num, lengths)
    assert out.shape == (2, 300, 7) and torch.isfinite(out[0]).all()
    # The long window's first steps are what the model gives for them alone (causal).
    assert max_diff(out[0, :10], rotary(cat[:1, :10], num[:1, :10], torch.tensor([10]))[0]) <= TOL
    learned = make_model("next_event", positions="learned", max_len=16)
    with pytest.raises(ValueError, match=r"T=300 exceeds .*max_len=16.*rotary"):
        learned(cat, num, lengths)


def test_rotary_stores_no_position_weights_and_round_trips(tmp_path):
    model = make_model("forecast", positions="rotary")
    assert not any("position" in name for name in model.state_dict())
    model.save_weights(tmp_path / "model.safetensors")
    again = make_model("forecast", seed=9, positions="rotary")
    again.load_weights(tmp_path / "model.safetensors")
    batch = pad_batch(SEQS, total=20)
    with torch.no_grad():
        assert max_diff(again(*batch), model(*batch)) == 0.0
    stored = json.loads(json.dumps(model.config.to_dict()))
    assert ModelConfig.from_dict(stored) == model.config and stored["positions"] == "rotary"


def test_rotary_needs_an_even_head_size():
    with pytest.raises(ModelConfigError, match=r"model\.num_heads=3: .*rotary.*hidden_size") as e:
        ModelSpec(architecture="transformer", positions="rotary", hidden_size=15, num_heads=3)
    assert e.value.field == "num_heads" and e.value.value == 3
    ModelSpec(architecture="transformer", positions="rotary", hidden_size=12, num_heads=3)
    ModelSpec(architecture="transformer", positions="learned", hidden_size=15, num_heads=3)
    with pytest.raises(ModelConfigError, match="positions"):
        ModelSpec(architecture="transformer", positions="alibi")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- memory


def _rss(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"{field} not in /proc/self/status")


def step_peak(step) -> int:
    """Bytes the resident set grew by at its peak while ``step()`` ran (Linux: the peak is
    reset through /proc/self/clear_refs, so earlier tests' peaks do not count)."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pytest.skip("cannot reset the peak RSS (/proc/self/clear_refs)")
    before = _rss("VmRSS")
    step()
    return _rss("VmHWM") - before


def test_the_peak_meter_sees_a_tensor_of_a_score_matrix_size():
    size = 64 * 1024**2
    assert step_peak(lambda: torch.ones(size // 4)) >= size * 0.9


@pytest.mark.parametrize("task", ["next_event", "classify"])
def test_a_training_step_at_4000_steps_needs_far_less_than_one_layers_scores(task):
    total, heads, rows = 4000, 2, 2
    model = make_model(
        task, positions="rotary", hidden_size=16, num_heads=heads, ffn_size=16, max_len=16
    ).train()

    def step(length: int) -> None:
        cat = torch.randint(1, 5, (rows, length, len(VOCABS)))
        num = torch.randn(rows, length, N_NUMERIC)
        lengths = torch.tensor([length, length - length // 4])  # padded: the key mask path
        model(cat, num, lengths).float().sum().backward()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a 1-CPU Ray Train worker; steadier on a shared machine
    try:
        step(16)  # first-call allocations (autograd, kernels' buffers) are not the window's
        peak = step_peak(lambda: step(total))
    finally:
        torch.set_num_threads(threads)
    one_layer_scores = rows * heads * total * total * 4  # float32 (B, heads, T, T): 244 MiB
    assert peak < one_layer_scores / 4, f"peak {peak / 2**20:.0f} MiB"
