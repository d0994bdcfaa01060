"""Helpers for train.py, one concern per module. Nothing here is imported at `--help` time but config.py."""
