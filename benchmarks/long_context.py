"""Long context: memory and time of one training step of the SDPA Transformer at 1k-5k steps.

One forward + loss + backward of the whole model (``SequenceModel``: encoder and head), at
params.yaml's model sizes (hidden 64, 4 heads, 2 layers, ffn 128), for windows of T = 1000,
2000 and 5000 events, as one sequence and as a batch of ``8192 // T`` sequences (the default
token budget; the first row T long, the others 90-100% of it, as in a bucket). Arms:

* ``nn.TransformerEncoder`` (baseline): the transformer before SDPA, kept below as
  ``LegacyTransformerEncoder`` (the same weights load in both): its merged key-padding and
  causal mask and, in training, attention dropout run PyTorch's reference kernel, which
  materialises (B, heads, T, T) scores;
* ``sdpa learned`` and ``sdpa rotary``: ``seqmodels.transformer`` with learned positions
  (``max_len`` set to the longest T) and with RoPE;
* ``lstm`` and ``tcn`` for reference.

Each measurement runs in a fresh child process, in training mode, with one torch thread (a
Ray Train worker's ``cpus_per_worker: 1``): one warm-up step, profiled to record which
attention kernel ran, then ``--steps`` timed steps. Reported per arm: seconds per step (the
median), the child's peak RSS, and the step's peak over the RSS before it (model and inputs
built); and the baseline's figures divided by the arm's (above 1: the arm is faster or needs
less). Arms alternate order round by round (baseline first in even rounds, last in odd ones);
medians over ``--rounds``. A case whose baseline would need more than ``--max-gib`` (the
pre-SDPA estimate: rows x T^2 x heads x layers x 16 bytes) skips the baseline.

``--task next_event`` measures causal attention (``is_causal``, no mask); the default
``classify`` is bidirectional (a broadcast key-padding mask). ``--quick``: T = 256 and 512,
one round, one timed step.

    .venv/bin/python benchmarks/long_context.py [--quick] [--task classify] [--rounds 2]
        [--lengths 1000,2000,5000] [--steps 2] [--max-gib 8]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import (
    OUT_DIR,
    PARAMS,
    fmt_bytes,
    median,
    print_table,
    rss_now,
    run_child,
    write_result,
)

ARMS = ("nn.TransformerEncoder", "sdpa learned", "sdpa rotary", "lstm", "tcn")
BASELINE = ARMS[0]
TOKEN_BUDGET = 8192
LEGACY_BYTES_PER_SCORE = 16
"""The pre-SDPA estimate of training memory per attention score per layer (its
``ATTENTION_BYTES_PER_SCORE``), used only to skip baseline cases that would not fit."""
VOCABS = (32, 16)
N_NUMERIC = 4


def legacy_encoder_class() -> type:
    """``seqmodels.transformer.TransformerEncoder`` as it was before SDPA (the baseline).

    Defined inside a function so that importing this script does not import torch: the
    parent process only starts children and prints tables.
    """
    import torch
    from torch import nn

    from seqmodels.config import ModelConfig
    from seqmodels.masking import (
        EncoderOutput,
        EventEmbedding,
        causal_mask,
        check_inputs,
        lengths_to_mask,
        pool,
        refuse_state,
    )
    from seqmodels.transformer import sinusoidal_positions

    class LegacyTransformerEncoder(nn.Module):
        """nn.TransformerEncoder (pre-norm, gelu) with a key-padding mask; learned or
        sinusoidal positions up to ``max_len``."""

        position_table: torch.Tensor

        def __init__(self, config: ModelConfig) -> None:
            super().__init__()
            self.config = config
            self.embed = EventEmbedding(
                config.vocab_sizes,
                config.n_numeric,
                config.embedding_dim,
                config.hidden_size,
                dropout=0.0,
            )
            self.max_len = config.max_len
            self.position: nn.Embedding | None = None
            if config.positions == "learned":
                self.position = nn.Embedding(config.max_len, config.hidden_size)
            else:
                self.register_buffer(
                    "position_table",
                    sinusoidal_positions(config.max_len, config.hidden_size),
                    persistent=False,
                )
            self.dropout = nn.Dropout(config.dropout)
            layer = nn.TransformerEncoderLayer(
                d_model=config.hidden_size,
                nhead=config.num_heads,
                dim_feedforward=config.ffn_size,
                dropout=config.dropout,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            self.blocks = nn.TransformerEncoder(
                layer, num_layers=config.depth, enable_nested_tensor=False
            )
            self.final_norm = nn.LayerNorm(config.hidden_size)
            self.causal = config.resolved_causal
            self.pooling = config.resolved_pooling

        def forward(
            self,
            categorical: torch.Tensor,
            numeric: torch.Tensor,
            lengths: torch.Tensor,
            state: Any = None,
            *,
            return_state: bool = False,
        ) -> EncoderOutput:
            refuse_state("transformer", state, return_state)
            lengths = check_inputs(
                categorical, numeric, lengths, self.config.n_categorical, self.config.n_numeric
            )
            total = categorical.shape[1]
            if total > self.max_len:
                raise ValueError(f"sequence length T={total} exceeds max_len={self.max_len}")
            mask = lengths_to_mask(lengths, total)
            real = mask.unsqueeze(-1)
            x = self.embed(categorical, numeric, mask)
            if self.position is not None:
                positions = self.position.weight[:total]
            else:
                positions = self.position_table[:total]
            x = self.dropout(torch.where(real, x + positions, 0.0))
            attn_mask = causal_mask(total, x.device) if self.causal else None
            steps = self.blocks(x, mask=attn_mask, src_key_padding_mask=~mask)
            steps = torch.where(real, self.final_norm(steps), 0.0)
            return EncoderOutput(steps, pool(steps, lengths, mask, self.pooling), None)

    return LegacyTransformerEncoder


@functools.cache
def params_spec() -> Any:
    """params.yaml's ``train.model`` (a ``ModelSpec``)."""
    from pipelines.config import load_params

    return load_params(PARAMS).train.model


def model_config(arm: str, task: str, max_len: int) -> Any:
    """params.yaml's model spec for ``arm`` with this script's input sizes."""
    from seqmodels import ModelConfig

    spec = params_spec()
    if arm in ("lstm", "tcn"):
        spec = dataclasses.replace(spec, architecture=arm)
    else:
        positions = "rotary" if arm == "sdpa rotary" else "learned"
        spec = dataclasses.replace(spec, architecture="transformer", positions=positions)
    return ModelConfig.from_spec(
        spec, task=task, vocab_sizes=VOCABS, n_numeric=N_NUMERIC, max_len=max_len,
        next_event_vocab=VOCABS[0],
    )  # fmt: skip


def build(arm: str, task: str, max_len: int, seed: int = 0) -> Any:
    """The arm's ``SequenceModel`` in training mode (the baseline swaps its encoder)."""
    import torch

    from seqmodels import build_model

    config = model_config(arm, task, max_len)
    torch.manual_seed(seed)
    model = build_model(config)
    if arm == BASELINE:
        torch.manual_seed(seed)
        model.encoder = legacy_encoder_class()(config)
    return model.train()


def make_batch(rows: int, length: int, task: str, seed: int = 0) -> dict[str, Any]:
    """``rows`` right-padded sequences: the first ``length`` long, the others 90-100% of it."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(max(1, length * 9 // 10), length + 1, (rows,), generator=gen)
    lengths[0] = length
    cat = torch.stack(
        [torch.randint(1, v, (rows, length), generator=gen) for v in VOCABS], dim=-1
    )  # (B, T, C)
    num = torch.randn(rows, length, N_NUMERIC, generator=gen)
    batch = {"cat": cat, "num": num, "length": lengths}
    if task == "classify":
        batch["label"] = torch.randint(0, 2, (rows,), generator=gen)
    else:
        batch["next_event"] = torch.randint(1, VOCABS[0], (rows, length), generator=gen)
    return batch


def train_step(model: Any, batch: dict[str, Any]) -> float:
    """Forward, the task's loss and backward (the optimizer step is the same for every arm)."""
    out = model(batch["cat"], batch["num"], batch["length"])
    loss = model.loss(out, batch, batch["length"])
    model.zero_grad(set_to_none=True)
    loss.backward()
    return float(loss.detach())


def attention_kernels(model: Any, batch: dict[str, Any]) -> list[str]:
    """The scaled-dot-product-attention ops (aten) that one step ran, by profiling it."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train_step(model, batch)
    names = {e.key for e in prof.key_averages() if "scaled_dot_product" in e.key}
    return sorted(names)


def step(arm: str, length: int, rows: int, task: str, steps: int, threads: int) -> dict[str, Any]:
    """What one child measures: the warm-up's kernels, then ``steps`` timed steps."""
    import torch

    torch.set_num_threads(threads)
    model = build(arm, task, max_len=length)
    batch = make_batch(rows, length, task)
    rss_before = rss_now()
    kernels = attention_kernels(model, batch)  # the warm-up step, not timed
    seconds = []
    for _ in range(steps):
        started = time.perf_counter()
        loss = train_step(model, batch)
        seconds.append(time.perf_counter() - started)
    return {
        "arm": arm, "length": length, "rows": rows, "task": task, "threads": threads,
        "seconds": seconds, "loss": loss, "kernels": kernels, "rss_before": rss_before,
    }  # fmt: skip


def cases(lengths: list[int], budget: int = TOKEN_BUDGET) -> list[tuple[int, int]]:
    """(T, rows): one sequence, and the token budget's rows where that is more than one."""
    out = []
    for length in lengths:
        out.append((length, 1))
        if budget // length > 1:
            out.append((length, budget // length))
    return out


def legacy_gib(length: int, rows: int) -> float:
    spec = params_spec()
    scores = rows * length * length * spec.num_heads * spec.depth_for(length)
    return float(scores * LEGACY_BYTES_PER_SCORE / 1024**3)


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every (case, arm) in fresh children, arms alternating order round by round."""
    script = str(Path(__file__).resolve())
    runs: dict[tuple[int, int, str], list[dict[str, Any]]] = {}
    for rnd in range(args.rounds):
        for length, rows in cases(args.lengths, args.budget):
            arms = [
                a for a in args.arms if a != BASELINE or legacy_gib(length, rows) <= args.max_gib
            ]
            for arm in arms if rnd % 2 == 0 else arms[::-1]:
                child = run_child([
                    script, "--step", arm, "--length", str(length), "--rows", str(rows),
                    "--task", args.task, "--steps", str(args.steps), "--threads", str(args.threads),
                ])  # fmt: skip
                result = {**child.result, "peak_rss": child.peak_rss}
                result["step_peak"] = child.peak_rss - result["rss_before"]
                runs.setdefault((length, rows, arm), []).append(result)
                print(f"round {rnd + 1}/{args.rounds} T={length} rows={rows} {arm:22s} "
                      f"{median(result['seconds']):7.3f} s/step, peak RSS "
                      f"{fmt_bytes(child.peak_rss)}", flush=True)  # fmt: skip
    return summarise(runs)


def summarise(runs: dict[tuple[int, int, str], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Medians per (case, arm) and the baseline's figures over the arm's (same case)."""
    rows = []
    for (length, n_rows, arm), results in runs.items():
        row: dict[str, Any] = {
            "length": length, "rows": n_rows, "arm": arm,
            "seconds_per_step": median(s for r in results for s in r["seconds"]),
            "peak_rss": median(r["peak_rss"] for r in results),
            "step_peak": median(r["step_peak"] for r in results),
            "kernels": results[0]["kernels"], "rounds": len(results),
        }  # fmt: skip
        rows.append(row)
    base = {(r["length"], r["rows"]): r for r in rows if r["arm"] == BASELINE}
    for row in rows:
        ref = base.get((row["length"], row["rows"]))
        row["speedup_vs_baseline"] = ref and ref["seconds_per_step"] / row["seconds_per_step"]
        row["memory_vs_baseline"] = ref and ref["step_peak"] / max(row["step_peak"], 1)
    return rows


def report(rows: list[dict[str, Any]], task: str) -> str:
    def ratio(value: float | None) -> str:
        return "-" if not value else f"{value:.1f}x"

    table = [
        [r["length"], r["rows"], r["arm"], f"{r['seconds_per_step']:.3f}",
         ratio(r["speedup_vs_baseline"]), fmt_bytes(r["step_peak"]),
         ratio(r["memory_vs_baseline"]), fmt_bytes(r["peak_rss"]),
         ", ".join(k.removeprefix("aten::") for k in r["kernels"]) or "-"]
        for r in rows
    ]  # fmt: skip
    return print_table(
        ["T", "rows", "arm", "s/step", "baseline s / arm s", "step peak", "baseline / arm",
         "peak RSS", "attention kernel"],
        table,
        title=f"forward + backward, task {task}, training mode; step peak = peak RSS over the "
        "RSS before the first step; ratios against the baseline (nn.TransformerEncoder) in "
        "the same case",
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="T = 256, 512; 1 round, 1 step")
    parser.add_argument("--task", choices=("classify", "next_event"), default="classify")
    parser.add_argument("--lengths", default="1000,2000,5000", help="comma-separated T")
    parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated arms")
    parser.add_argument("--budget", type=int, default=TOKEN_BUDGET, help="tokens per batch")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per child")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-gib", type=float, default=8.0, help="skip larger baselines")
    parser.add_argument("--out", default=str(OUT_DIR / "long_context.json"))
    parser.add_argument("--step", default=None, help=argparse.SUPPRESS)  # child: this arm
    parser.add_argument("--length", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.step is not None:
        write_result(
            args.result,
            step(args.step, args.length, args.rows, args.task, args.steps, args.threads),
        )
        return 0
    if args.quick:
        args.lengths, args.rounds, args.steps = "256,512", 1, 1
    args.lengths = [int(x) for x in args.lengths.split(",")]
    args.arms = [a.strip() for a in args.arms.split(",")]
    unknown = sorted(set(args.arms) - set(ARMS))
    if unknown:
        parser.error(f"--arms: unknown {', '.join(unknown)}; expected some of {', '.join(ARMS)}")
    rows = measure(args)
    table = report(rows, args.task)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    keys = ("task", "lengths", "budget", "arms", "rounds", "steps", "threads")
    settings = {k: getattr(args, k) for k in keys}
    out.write_text(json.dumps({**settings, "rows": rows, "table": table}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
