"""``sparsifyctl dashboard``: a small local web app over runs, sweeps and cluster experiments.

It renders what the CLI's own functions return (compare, report.html, predict, the
experiment flags and manifest builder); it never re-implements a command. ``create_app``
lives in ``app.py`` (fastapi is imported only when the dashboard starts).
"""
