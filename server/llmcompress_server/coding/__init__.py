"""LOSSLESS coding: the fixed-width engine, stream layout, and each stream's row stage and coder."""
