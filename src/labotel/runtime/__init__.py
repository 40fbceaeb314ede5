"""Runtime collectors: observable OpenTelemetry instruments, one module per concern."""
