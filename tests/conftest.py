"""Shared pytest setup. Area-specific fixtures live in tests/<area>/conftest.py."""

import os
import sys
from pathlib import Path

# examples/ holds the offline asset builders tests share (detection_assets, assets): importable
# as plain modules, one copy each.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

# Keep tests fast and quiet on small CI machines.
os.environ.setdefault("SPARSIFY_TERMINATION_LOG", "")
os.environ.setdefault("OMP_NUM_THREADS", "2")
