"""Dataset readers, one module per format (npz samples, image folders, text csv/jsonl)."""
