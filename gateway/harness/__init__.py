"""Helpers for tests and benchmarks: fault injection, not used by the gateway itself."""
