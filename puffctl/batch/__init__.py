"""The batch engine: spec -> cells (stable ids) -> state file -> run/resume -> report."""
