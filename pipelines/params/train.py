"""``train``: model, optimisation, Ray Train scaling and MLflow experiment
(docs/architecture.md §5)."""

from __future__ import annotations

from dataclasses import dataclass

from seqcore.config import fail

TASKS = ("classify", "next_event", "forecast")
ARCHITECTURES = ("lstm", "gru", "transformer")


@dataclass(frozen=True)
class TrainConfig:
    """The train stage (ARCHITECTURE §5): model, optimisation, Ray Train scaling, MLflow."""

    task: str = "classify"
    """classify (entity label) | next_event (next category per step) | forecast (H steps)."""
    architecture: str = "lstm"
    """lstm | gru | transformer."""
    embedding_dim: int = 16
    """Embedding width per categorical feature."""
    hidden_size: int = 64
    num_layers: int = 1
    dropout: float = 0.1
    num_heads: int = 4
    """transformer only."""
    ffn_size: int = 128
    """transformer only: feed-forward width."""
    epochs: int = 8
    lr: float = 3e-3
    """Peak learning rate (AdamW), reached after warmup, then cosine decay to 10%."""
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05
    """Share of all steps spent warming the learning rate up linearly."""
    grad_clip: float = 1.0
    """Max global gradient norm; 0 disables clipping."""
    max_tokens: int = 8192
    """Token budget of one batch per worker (examples x padded length)."""
    patience: int = 3
    """Early stopping: epochs without improvement of the validation loss before stopping."""
    num_workers: int = 2
    """Ray Train workers (DDP ranks); at most shard.max_workers so each reads its own parts."""
    cpus_per_worker: int = 1
    use_gpu: str = "auto"
    """auto (GPUs when the cluster has them) | always | never."""
    amp: str = "bf16"
    """Mixed precision on GPU: bf16 | none. CPUs always run fp32."""
    max_failures: int = 2
    """Worker failures retried from the latest checkpoint (Ray Train FailureConfig)."""
    experiment: str = "seqops"
    """MLflow experiment name."""
    storage_path: str | None = None
    """Ray Train storage for checkpoints; null = .ray_results in the repository."""

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise fail("train.task", self.task, f"expected one of {', '.join(TASKS)}")
        if self.architecture not in ARCHITECTURES:
            raise fail(
                "train.architecture",
                self.architecture,
                f"expected one of {', '.join(ARCHITECTURES)}",
            )
        for name in (
            "embedding_dim",
            "hidden_size",
            "num_layers",
            "num_heads",
            "ffn_size",
            "epochs",
            "max_tokens",
            "patience",
            "num_workers",
            "cpus_per_worker",
        ):
            if getattr(self, name) < 1:
                raise fail(f"train.{name}", getattr(self, name), "must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise fail("train.dropout", self.dropout, "must be within [0, 1)")
        if self.lr <= 0:
            raise fail("train.lr", self.lr, "must be > 0")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise fail("train.warmup_fraction", self.warmup_fraction, "must be within [0, 1)")
        if self.grad_clip < 0 or self.weight_decay < 0:
            raise fail(
                "train.grad_clip/weight_decay", (self.grad_clip, self.weight_decay), "must be >= 0"
            )
        if self.use_gpu not in ("auto", "always", "never"):
            raise fail("train.use_gpu", self.use_gpu, "expected auto, always or never")
        if self.amp not in ("bf16", "none"):
            raise fail("train.amp", self.amp, "expected bf16 or none")
        if self.max_failures < -1:
            raise fail(
                "train.max_failures", self.max_failures, "must be >= -1 (-1 = retry forever)"
            )
