"""The ``seqops`` command: one entry point above the pipeline stages and serving."""
