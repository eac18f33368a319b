"""Ray Serve online/streaming scoring and Ray Data batch scoring (docs/architecture.md §7)."""
