"""``sparsifyctl predict`` in an 80-column terminal: every table cell whole (issue 25: the
tables were cut to "unstruc…" and "1.00-1.…")."""

from __future__ import annotations

import re

from .conftest import FAST, run_cli

# one prediction row: level, INT8, pruning, ms, speedup, interval, no INT8 (each cell whole)
CELLS = [
    r"[01](\.[0-9]+)?",
    r"yes|no",
    r"[0-9]+% (sparse|MACs)",
    r"[0-9]+\.[0-9]{3}",
    r"[0-9]+\.[0-9]{2}x",
    r"[0-9]+\.[0-9]{2}-[0-9]+\.[0-9]{2}x",
    r"[0-9]+\.[0-9]{2}x",
]


def test_tables_fit_80_columns_without_cutting_cells(conv_onnx, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    argv = ["predict", str(conv_onnx), "--levels", "0,0.5,1", "--structures", "unstructured,channels"]
    code, out, err = run_cli([*argv, *FAST])
    assert code == 0, err
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80, out
    assert "…" not in out and "..." not in out, out
    # one table per structure, titled in full, its rows whole on one line each
    tables = re.split(r"^predicted on the target: ", out, flags=re.M)[1:]
    assert [t.split("\n", 1)[0].strip() for t in tables] == ["unstructured pruning", "channels pruning"]
    for table in tables:
        rows = [
            [c.strip() for c in line.strip("│").split("│")]
            for line in table.splitlines()
            if line.startswith("│")
        ]
        assert [r[0] for r in rows] == ["0", "0.5", "1"], table
        for row in rows:
            assert len(row) == len(CELLS), row
            for cell, pattern in zip(row, CELLS, strict=True):
                assert re.fullmatch(pattern, cell), (cell, pattern, table)
