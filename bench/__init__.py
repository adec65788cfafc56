"""Benchmarks of Enterprise AI (not tests: nothing here asserts on timings)."""
