"""``python -m tests.benchmarks [--quick] [--n 300] [--repeat 3] ...`` (run from the repository root)."""

import sys

from .harness import main

sys.exit(main())
