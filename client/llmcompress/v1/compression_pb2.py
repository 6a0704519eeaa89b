"""The messages of `llmcompress.v1`: the llmcompress-proto module, under the client's name."""

from llmcompress_proto.v1.compression_pb2 import *  # noqa: F403
