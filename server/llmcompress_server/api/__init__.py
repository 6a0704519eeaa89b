"""The service's face: the gRPC server and servicer, its interceptors (errors, auth, request
metrics), TLS, and the `llmc serve` command."""
