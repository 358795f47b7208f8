"""natfleet: `show xlate` for a fleet of Linux NAT boxes.

Example:
    $ natfleet local -nN          # this box, netstat-nat compatible
    $ natfleet summary --host nat-a --host nat-b
"""

__version__ = "0.1.0"
