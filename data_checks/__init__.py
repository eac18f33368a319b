"""The data contract: Great Expectations suites plus per-entity ordering checks.

Returns structured results and never exits the process itself (docs/architecture.md §2).
"""
