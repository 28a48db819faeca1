"""Experiments: short modules that compose cached stages on the shared skeleton (`skeleton.py`)."""
