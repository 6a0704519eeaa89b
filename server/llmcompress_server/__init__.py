"""llmcompress server: a gRPC service that compresses text with language models."""

__version__ = "0.1.0"
