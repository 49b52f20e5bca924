"""Prefect flows: the pipeline, its config model, the CLI."""
