"""LOSSLESS coding: the fixed-width engine, stream layout, each stream's row stage and coder,
and the exact tokenizer."""
