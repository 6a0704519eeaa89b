"""Generated stubs of the llmcompress protos: `llmcompress_proto.v1` is package `llmcompress.v1`."""
