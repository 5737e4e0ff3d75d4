"""Versioned wire contracts: Segment events in, table state, internal envelopes, API bodies.

Every shape that crosses a process boundary or outlives a deploy is defined here. JSON Schema
files under ``schemas/json/`` are generated from these models (``make schemas``); a test fails
when they are stale.
"""
