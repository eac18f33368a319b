"""seqops' shared core: what the stages, the data contract and serving agree on.

The events schema, the typed shard manifest, feature fitting and the one ``encode`` of raw
events, the scorer and its loader, atomic I/O. It sits below ``pipelines/``, ``serving/`` and
``data_checks/`` and above ``seqmodels/``, and imports none of them (docs/architecture.md §8).
"""
