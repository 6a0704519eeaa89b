"""`llmc`: compress, reconstruct and inspect from the shell (`llmc serve` comes with the server)."""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
