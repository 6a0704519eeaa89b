"""`python -m llmcompress.cli`: the same as `llmc`."""

from .main import main

raise SystemExit(main())
