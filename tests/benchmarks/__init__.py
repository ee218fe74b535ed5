"""pacsguard benchmark harness: ``python -m tests.benchmarks`` (see harness.py)."""
