"""Benchmarks that anyone can rerun (see bench/README.md)."""
