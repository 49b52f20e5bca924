"""Prefect tasks: one module per AWS concern, plus the runtime seam (local/)."""
