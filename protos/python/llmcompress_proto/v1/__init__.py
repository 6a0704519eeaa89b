"""Generated stubs of proto package `llmcompress.v1` (`make proto`; never edited by hand)."""
