"""The one exception type for user-facing errors.

A `ParplanError` names the offending value, the rule it breaks and the fix. The CLI turns
it into a message on stderr and exit status 2; library callers can catch it as ValueError.
"""

from __future__ import annotations

__all__ = ["ParplanError"]


class ParplanError(ValueError):
    """Bad input: the message says which value, which rule, and how to fix it."""
