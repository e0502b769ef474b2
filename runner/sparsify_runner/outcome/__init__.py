"""Levels as outcomes: judge candidates against the baseline, search, and choose."""
