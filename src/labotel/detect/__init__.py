"""Detectors that explain problems; every one reports through ``detection.Reporter``."""
