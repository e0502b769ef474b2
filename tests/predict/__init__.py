"""Tests of sparsifyctl predict."""
