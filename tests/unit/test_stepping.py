"""The numpy streaming step (``seqmodels.stepping``) against the model it copies.

Streaming scoring runs a call's few new events through :class:`RecurrentStepper` and longer
runs through ``SequenceModel.encode`` on a batch of one; both must give what the model's own padded-batch
path gives (``forward_with_state``), step by step and across calls.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seqmodels.stepping import CELL_STEPS, RecurrentStepper, to_numpy_state, to_torch_state
from tests.unit.test_models import RNNS, TASKS, TOL, make_events, make_model


def _state_diff(a, b) -> float:
    a, b = (a if isinstance(a, tuple) else (a,)), (b if isinstance(b, tuple) else (b,))
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("arch", RNNS)
@torch.inference_mode()
def test_stepper_continues_a_state_like_the_model(arch, task):
    model = make_model(arch, task, seed=3)
    stepper = RecurrentStepper(model)
    cat, num = make_events(CELL_STEPS + 5, torch.Generator().manual_seed(7))
    # The model over the whole sequence at once: the reference for every prefix.
    full_out, full_state = model.forward_with_state(cat[None], num[None], torch.tensor([len(cat)]))
    steps_ref = model.encode(cat[None], num[None], torch.tensor([len(cat)])).steps[0].numpy()

    state, start, outputs = None, 0, []
    for size in (1, 3, CELL_STEPS, 1):  # within the cell limit: every call in numpy
        part = slice(start, start + size)
        steps, state = stepper.steps(cat[part].numpy(), num[part].numpy(), state)
        np.testing.assert_allclose(steps, steps_ref[part], atol=TOL)
        outputs.append(steps)
        start += size
    assert start == len(cat)
    assert _state_diff(state, to_numpy_state(full_state)) <= TOL
    if task == "classify":  # pooling "last": the head on the last step
        expected = torch.softmax(full_out, dim=-1)[0].numpy()
        np.testing.assert_allclose(stepper.head(outputs[-1][-1:])[0], expected, atol=TOL)
    else:
        expected = full_out[0]
        if task == "next_event":
            expected = torch.softmax(expected, dim=-1)
        np.testing.assert_allclose(stepper.head(np.concatenate(outputs)), expected, atol=TOL)


@pytest.mark.parametrize("arch", RNNS)
@torch.inference_mode()
def test_model_and_stepper_hand_over_state(arch):
    # A long first call through the model, then numpy steps, then the model again.
    model = make_model(arch, "classify", seed=5)
    stepper = RecurrentStepper(model)
    cat, num = make_events(40, torch.Generator().manual_seed(2))
    _, full_state = model.forward_with_state(cat[None], num[None], torch.tensor([40]))
    first = model.encode(cat[None, :30], num[None, :30], torch.tensor([30]), return_state=True)
    state = to_numpy_state(first.state)
    _, state = stepper.steps(cat[30:33].numpy(), num[30:33].numpy(), state)
    _, state_t = model.forward_with_state(
        cat[None, 33:], num[None, 33:], torch.tensor([7]), to_torch_state(state)
    )
    assert _state_diff(to_numpy_state(state_t), to_numpy_state(full_state)) <= TOL
    assert first.steps.shape == (1, 30, model.config.hidden_size)


def test_stepper_refuses_bad_ids_and_transformers():
    model = make_model("lstm", "classify")
    stepper = RecurrentStepper(model)
    cat, num = make_events(2, torch.Generator().manual_seed(0))
    cat = cat.numpy().copy()
    cat[1, 1] = model.config.vocab_sizes[1]  # one past the table
    with pytest.raises(ValueError, match=r"categorical\[\.\.\., 1\]"):
        stepper.steps(cat, num.numpy(), None)
    with pytest.raises(ValueError, match="LSTM/GRU"):
        RecurrentStepper(make_model("transformer", "classify"))
    with pytest.raises(ValueError, match="training mode"):
        RecurrentStepper(make_model("gru", "classify").train())


def test_extreme_inputs_saturate_the_gates_without_overflow():
    model = make_model("lstm", "classify")
    stepper = RecurrentStepper(model)
    cat, num = make_events(3, torch.Generator().manual_seed(1))
    with np.errstate(all="raise"):  # an overflow in exp would raise here
        steps, (h, c) = stepper.steps(cat.numpy(), num.numpy() * 1e30, None)
    assert np.isfinite(steps).all() and np.isfinite(h).all() and np.isfinite(c).all()
    assert np.abs(h).max() <= 1.0


@pytest.mark.parametrize("arch", RNNS)
@torch.inference_mode()
def test_a_numeric_only_model_steps_like_the_model(arch):
    """No categorical column: no embedding table (a numeric-only schema's streaming replica
    failed to start)."""
    model = make_model(arch, "classify", seed=5, vocab_sizes=[])
    stepper = RecurrentStepper(model)
    num = torch.randn(6, 3, generator=torch.Generator().manual_seed(2))
    cat = torch.zeros(6, 0, dtype=torch.long)
    ref = model.encode(cat[None], num[None], torch.tensor([6])).steps[0].numpy()
    steps, _ = stepper.steps(cat.numpy(), num.numpy(), None)
    np.testing.assert_allclose(steps, ref, atol=TOL)
