"""sparsifyctl: the user CLI (run, benchmark, compare, sweep, predict, serve, dashboard, and the
cluster commands). It drives the runner in-process or a cluster through the operator's models;
the controller (``sparsify_operator``) never imports it."""
