"""Benchmarks of issue 6: what the pipeline costs, against the bare scripts and a peer.

``make bench`` (or ``python -m bench``) runs them all; see ``bench/README.md``.
"""
