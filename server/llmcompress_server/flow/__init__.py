"""A request's way through the server: admission, the pipeline (routing and every fallback),
BatchCompress streams, and the result cache."""
