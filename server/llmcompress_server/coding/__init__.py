"""LOSSLESS coding: the fixed-width engine, stream layout, each stream's row stage and coder,
the exact tokenizer, and the engine fingerprint an envelope records."""
