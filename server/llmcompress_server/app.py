"""The public entry point, `llmcompress_server.app.create_server`; the server is built in api/."""

from .api.server import App, create_server, serve

__all__ = ["App", "create_server", "serve"]
