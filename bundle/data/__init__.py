"""Data: built-in phantoms, readers for real containers, preparation into the pipeline's layout."""
