"""`python -m benchmarks`: see benchmarks/_cli.py and benchmarks/README.md."""

import sys

from benchmarks._cli import main

sys.exit(main())
