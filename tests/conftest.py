"""Shared pytest setup. Area-specific fixtures live in tests/<area>/conftest.py."""

import os

# Keep tests fast and quiet on small CI machines.
os.environ.setdefault("SPARSIFY_TERMINATION_LOG", "")
os.environ.setdefault("OMP_NUM_THREADS", "2")
