"""Generated stubs of package `llmcompress.v1` (`make proto`; never edited by hand)."""
