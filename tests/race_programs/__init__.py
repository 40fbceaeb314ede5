"""Unannotated programs the race-instrumentation tests import through the hook."""
