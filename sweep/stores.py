"""Where a sweep's records live: the MLflow tracking store and the Optuna storage.

Example:
    >>> from sweep.stores import mask_url
    >>> mask_url("postgresql://me:secret@db:5432/optuna")
    'postgresql://me:***@db:5432/optuna'
"""

from __future__ import annotations

import re


def mask_url(url: str) -> str:
    """Hide the password in `scheme://user:password@host/...` (output, tags and reports)."""
    return re.sub(r"(://[^:/@\s]*):[^@/\s]*@", r"\1:***@", url)
