#!/usr/bin/env python3
"""Script entry: ``.venv/bin/python tests/benchmarks/run.py [--quick] ...`` (same as ``-m tests.benchmarks``)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.benchmarks.harness import main  # noqa: E402

sys.exit(main())
