"""Ray Serve online/streaming scoring and Ray Data batch scoring (ARCHITECTURE §7)."""
