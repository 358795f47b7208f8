"""Making untrusted text (tag values, host names, kernel strings) safe to print.

Example:
    >>> printable("nat\\u202egnp.exe\\nrm -rf /")
    'nat\\\\u202egnp.exe\\\\nrm -rf /'
"""

from __future__ import annotations


def printable(text: str, newlines: bool = False) -> str:
    """``text`` with unprintable characters (controls, bidi overrides, and newlines unless
    ``newlines``) escaped, so a hostile name can neither break a table nor reorder it."""
    return "".join(
        c if c.isprintable() or (newlines and c == "\n") else c.encode("unicode_escape").decode()
        for c in text
    )
