"""Benchmark of RunnableK8s against a plain Celery baseline: `python -m benchmarks.bench`."""
