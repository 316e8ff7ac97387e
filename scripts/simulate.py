#!/usr/bin/env python
"""Deterministic simulator of a cluster of scheduler replicas (see docs/testing-the-scheduler.md).

python scripts/simulate.py --seeds 1-200        # ends with "200 runs, 0 violations"
python scripts/simulate.py --seed 17 --trace    # replay one seed, full event trace
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from simulator.runner import main

if __name__ == "__main__":
    sys.exit(main())
