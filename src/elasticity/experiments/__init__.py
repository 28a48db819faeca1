"""Experiments: short functions that compose stages and write tidy results tables."""
