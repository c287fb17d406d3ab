"""Benchmarks of compiled nets against a peer framework run in the same process."""
