"""The thresholds of ``natfleet check``: the ``[check]`` section of the configuration.

Example:
    >>> parse_check({"fill_warning_pct": 70}).fill_warning_pct
    70.0
    >>> parse_check({"fill_warnig_pct": 70})
    Traceback (most recent call last):
    natfleet.errors.ConfigError: config: unknown key check.fill_warnig_pct (known: ...)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from natfleet.errors import ConfigError


@dataclass(frozen=True)
class CheckConfig:
    """Every threshold of ``natfleet check`` (config/natfleet.toml ``[check]`` explains each)."""

    fill_warning_pct: float = 80.0  # nf_conntrack_count / nf_conntrack_max
    fill_critical_pct: float = 95.0
    port_pressure_warning_pct: float = 50.0  # ports toward one destination / port range
    port_pressure_critical_pct: float = 90.0
    port_range_min: int = 16384  # fewer ip_local_port_range ports: port-range-small
    established_timeout_max: int = 86400  # s; above: tcp-established-timeout
    conntrack_entry_bytes: int = 320  # kernel memory per conntrack entry (estimate)
    conntrack_memory_max_pct: float = 25.0  # nf_conntrack_max entries vs MemTotal
    buckets_ratio_max: float = 8.0  # nf_conntrack_max / nf_conntrack_buckets
    ena_conntrack_available_min: int = 10000  # conntrack_allowance_available
    natgw_connections_warning_pct: float = 80.0  # peak / (55,000 x addresses)
    natgw_port_errors_critical: int = 100  # ErrorPortAllocation in the window
    natgw_drop_rate_critical_pct: float = 1.0  # PacketsDropCount / packets in


DEFAULTS = CheckConfig()
_PCT_KEYS = frozenset(f.name for f in dataclasses.fields(CheckConfig) if f.name.endswith("_pct"))


def parse_check(table: dict[str, Any], where: str = "config") -> CheckConfig:
    """A :class:`CheckConfig` from the ``[check]`` table; unknown keys, wrong types and
    numbers out of range are ConfigErrors naming the key."""
    defaults = CheckConfig()
    known = {f.name: f for f in dataclasses.fields(CheckConfig)}
    unknown = sorted(set(table) - set(known))
    if unknown:
        names = ", ".join(sorted(known))
        raise ConfigError(f"{where}: unknown key check.{unknown[0]} (known: {names})")
    values: dict[str, Any] = {}
    for name, value in table.items():
        default = getattr(defaults, name)
        kinds: tuple[type, ...] = (int, float) if isinstance(default, float) else (int,)
        if isinstance(value, bool) or not isinstance(value, kinds):
            kind = "a number" if float in kinds else "an integer"
            raise ConfigError(f"{where}: check.{name} must be {kind}, not {value!r}")
        if value < 0 or (name in _PCT_KEYS and value > 100):
            span = "0 to 100" if name in _PCT_KEYS else "0 or more"
            raise ConfigError(f"{where}: check.{name} must be {span}, not {value!r}")
        values[name] = float(value) if float in kinds else value
    config = dataclasses.replace(defaults, **values)
    for low, high in (
        ("fill_warning_pct", "fill_critical_pct"),
        ("port_pressure_warning_pct", "port_pressure_critical_pct"),
    ):
        if getattr(config, low) > getattr(config, high):
            raise ConfigError(f"{where}: check.{low} must not be above check.{high}")
    return config
