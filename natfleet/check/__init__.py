"""``natfleet check``: NAT health findings, each with a stable id, a severity, the evidence
(the values read) and advice.

- :mod:`natfleet.check.findings`: the :class:`~natfleet.check.findings.Finding` record and
  the catalogue of every finding id (``CATALOGUE``: default severity, title, advice);
- :mod:`natfleet.check.box`: findings from one box's checked check answer (and, with two
  reads, the counters' growth);
- :mod:`natfleet.check.cloud`: findings from AWS discovery and NAT gateway metrics;
- :mod:`natfleet.check.report`: every subject's findings, worst first, as output records,
  and the ``--fail-on`` rule;
- :mod:`natfleet.check.thresholds`: the ``[check]`` section of the configuration.

The library face is :func:`natfleet.api.check`.
"""
