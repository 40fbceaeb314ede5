"""The seam for other people's internals: labotel asks here, the rest never guesses.

``python`` answers what differs between the CPython versions labotel supports. Private
names of the OpenTelemetry SDK and prometheus_client are to move here too (one module per
package), so that a new release breaks one file, probed once, instead of scattered
``getattr(..., None)`` calls.
"""
