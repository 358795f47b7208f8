"""Making untrusted text (tag values, host names, kernel strings) safe to print: the name
older modules import; the one implementation is :func:`natfleet.output.safe`.

Example:
    >>> printable("nat\\u202egnp.exe\\nrm -rf /")
    'nat\\\\u202egnp.exe\\\\nrm -rf /'
"""

from __future__ import annotations

from natfleet.output import safe as printable

__all__ = ["printable"]
