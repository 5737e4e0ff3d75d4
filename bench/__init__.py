"""Benchmarks (``make bench``): measured on the local broker, reported as JSON and Markdown."""
