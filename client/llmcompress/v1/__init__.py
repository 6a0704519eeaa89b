"""The generated stubs of proto package `llmcompress.v1`, as the client has always offered them:
`from llmcompress.v1 import compression_pb2`. They live in the llmcompress-proto distribution."""
