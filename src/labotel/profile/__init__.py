"""Go-compatible profiles: CPU and wall samplers, tracemalloc heap, thread/task stacks."""
