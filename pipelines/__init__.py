"""seqops pipeline stages: one module per DVC stage, each a thin CLI over a pure ``run()``."""
