"""The one exception type for user mistakes, in a module with no dependencies.

Everything that validates input raises `ConfigError`; the CLI turns it into one
`error:` line and exit code 2. It lives here, apart from `engine.config`, so that the
component modules (data suites, models) can raise it without importing the config
schema that validates against their registries.

Example:
    >>> from engine.errors import ConfigError
    >>> issubclass(ConfigError, ValueError)
    True
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A user-facing configuration mistake (the CLI turns it into exit code 2)."""
