"""natfleet's TOML configuration and price list.

The first of ``--config FILE``, ``$NATFLEET_CONFIG``, ``~/.config/natfleet/config.toml`` is
read; with none the built-in defaults apply, which equal ``config/natfleet.toml``. Unknown
keys and wrong types are errors naming the file, so typos never pass silently.

Example:
    >>> cfg = load_config()                     # defaults when no file exists
    >>> cfg.discovery.tags
    ('Role=nat',)
    >>> load_prices(cfg).nat_gateway_hourly
    0.045
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from natfleet.check.thresholds import CheckConfig, parse_check
from natfleet.errors import ConfigError, UsageError
from natfleet.limits import AnswerLimits, MiB

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

METHODS = ("tag", "route", "source-dest-check")
ADDRESSES = ("private", "public")


@dataclass(frozen=True)
class DiscoveryConfig:
    """How NAT instances are found (see ``[discovery]`` in config/natfleet.toml)."""

    methods: tuple[str, ...] = METHODS
    tags: tuple[str, ...] = ("Role=nat",)
    gateways: bool = True
    address: str = "private"


@dataclass(frozen=True)
class SshConfig:
    """How boxes are read; ``user`` None means ~/.ssh/config or the login name.

    ``timeout`` is the whole per-box deadline (connecting, running the agent, reading and
    checking its answer); connecting may take at most ``connect_timeout`` of it.
    """

    user: Optional[str] = None
    connect_timeout: float = 10.0
    timeout: float = 60.0
    parallel: int = 32


@dataclass(frozen=True)
class SsmConfig:
    """How boxes are reached without SSH (``[ssm]``): ``via`` ssh, ssm or auto (SSM for a
    discovered instance without a reachable SSH path), Run Command's S3 output, its
    MaxConcurrency/MaxErrors, boxes in flight at once, and Instance Connect (``eic``)."""

    via: str = "ssh"
    output_s3: str = ""
    max_concurrency: str = "50"
    max_errors: str = "100%"
    parallel: int = 100
    probe_timeout: float = 1.5
    eic: bool = False


@dataclass(frozen=True)
class Config:
    """The whole configuration; ``path`` is the file read (None: built-in defaults)."""

    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    ssh: SshConfig = field(default_factory=SshConfig)
    ssm: SsmConfig = field(default_factory=SsmConfig)
    limits: AnswerLimits = field(default_factory=AnswerLimits)
    check: CheckConfig = field(default_factory=CheckConfig)  # [check]: natfleet check
    prices_file: Optional[Path] = None
    path: Optional[Path] = None


@dataclass(frozen=True)
class Prices:
    """Hourly and per-GB prices (estimates) used to compare NAT gateways with NAT instances."""

    region: str = "us-east-1"
    currency: str = "USD"
    nat_gateway_hourly: float = 0.045
    nat_gateway_per_gb: float = 0.045
    instance_hourly: dict[str, float] = field(
        default_factory=lambda: {
            "t4g.nano": 0.0042,
            "t4g.micro": 0.0084,
            "t4g.small": 0.0168,
            "t3.nano": 0.0052,
            "t3.micro": 0.0104,
            "t3.small": 0.0208,
            "c6gn.medium": 0.0432,
            "c7gn.medium": 0.0624,
        }
    )
    estimate: bool = True
    path: Optional[Path] = None

    def gateway_cost(self, hours: float, bytes_processed: Optional[float]) -> float:
        """A NAT gateway's charge: hours plus GB processed (data transfer not included).

        Example:
            >>> Prices().gateway_cost(730, 100e9)   # a month, 100 GB
            37.35
        """
        gb = (bytes_processed or 0.0) / 1e9
        return round(hours * self.nat_gateway_hourly + gb * self.nat_gateway_per_gb, 6)

    def instance_cost(self, instance_type: Optional[str], hours: float) -> Optional[float]:
        """A NAT instance's on-demand charge; None when the type is not in the price list."""
        hourly = self.instance_hourly.get(instance_type or "")
        return None if hourly is None else round(hours * hourly, 6)


def parse_tag(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` -> ``(KEY, VALUE)``; ``KEY=`` means any value. Raises UsageError.

    Example:
        >>> parse_tag("Role=nat")
        ('Role', 'nat')
    """
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"tag must be KEY=VALUE (KEY= for any value), not {text!r}")
    return key.strip(), value  # a value may end in a space, as tag values can


def find_config(explicit: Optional[str] = None) -> Optional[Path]:
    """The config file to read, or None for the built-in defaults.

    Example:
        >>> find_config("/etc/natfleet.toml")
        PosixPath('/etc/natfleet.toml')
    """
    for source, value in (("--config", explicit), ("NATFLEET_CONFIG", _env("NATFLEET_CONFIG"))):
        if value:
            path = Path(value).expanduser()
            if not path.is_file():
                raise ConfigError(f"{path}: no such config file (from {source})")
            return path
    base = _env("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    default = Path(base) / "natfleet" / "config.toml"
    try:
        return default if default.is_file() else None
    except OSError as exc:  # e.g. a ~/.config/natfleet folder this user may not enter
        raise ConfigError(f"{default}: cannot read: {exc.strerror or exc}") from None


def load_config(explicit: Optional[str] = None) -> Config:
    """Read and check the configuration (see :func:`find_config` for where from)."""
    path = find_config(explicit)
    if path is None:
        return Config()
    return parse_config(_read_toml(path), path)


def parse_config(data: dict[str, Any], path: Optional[Path] = None) -> Config:
    """A :class:`Config` from parsed TOML; errors name ``path`` and the key.

    Example:
        >>> parse_config({"ssh": {"parallel": 8}}).ssh.parallel
        8
    """
    where = str(path or "config")
    _only(data, {"discovery", "ssh", "limits", "prices", "ssm", "check"}, where, "")
    disc = _table(data, "discovery", where)
    ssh = _table(data, "ssh", where)
    limits = _table(data, "limits", where)
    prices = _table(data, "prices", where)
    _only(disc, {"methods", "tags", "gateways", "address"}, where, "discovery.")
    _only(ssh, {"user", "connect_timeout", "timeout", "parallel"}, where, "ssh.")
    _only(limits, {"summary_kb", "listing_mb"}, where, "limits.")
    _only(prices, {"file"}, where, "prices.")

    d = DiscoveryConfig()
    methods = tuple(_get(disc, "methods", list, list(d.methods), where, "discovery"))
    for m in methods:
        if m not in METHODS:
            raise ConfigError(f"{where}: discovery.methods: {m!r} is not one of {METHODS}")
    tags = tuple(_get(disc, "tags", list, list(d.tags), where, "discovery"))
    for t in tags:
        try:
            parse_tag(str(t))
        except UsageError as exc:
            raise ConfigError(f"{where}: discovery.tags: {exc}") from exc
    address = _get(disc, "address", str, d.address, where, "discovery")
    if address not in ADDRESSES:
        raise ConfigError(f"{where}: discovery.address must be 'private' or 'public'")
    s = SshConfig()
    parallel = _get(ssh, "parallel", int, s.parallel, where, "ssh")
    if parallel < 1:
        raise ConfigError(f"{where}: ssh.parallel must be at least 1")
    timeouts = {}
    for key, default in (
        ("connect_timeout", s.connect_timeout),
        ("timeout", s.timeout),
    ):
        timeouts[key] = float(_get(ssh, key, (int, float), default, where, "ssh"))
        if timeouts[key] <= 0:
            raise ConfigError(f"{where}: ssh.{key} must be more than 0 seconds")
    prices_file = _get(prices, "file", str, "", where, "prices")
    caps = AnswerLimits()
    summary_kb = _get(limits, "summary_kb", int, caps.summary_bytes // 1024, where, "limits")
    listing_mb = _get(limits, "listing_mb", int, caps.list_bytes // MiB, where, "limits")
    for key, value in (("summary_kb", summary_kb), ("listing_mb", listing_mb)):
        if not 1 <= value <= 1 << 20:
            raise ConfigError(f"{where}: limits.{key} must be 1 to 1048576")
    return Config(
        discovery=DiscoveryConfig(
            methods=methods,
            tags=tags,
            gateways=_get(disc, "gateways", bool, d.gateways, where, "discovery"),
            address=address,
        ),
        ssh=SshConfig(
            user=_get(ssh, "user", str, "", where, "ssh") or None,
            connect_timeout=timeouts["connect_timeout"],
            timeout=timeouts["timeout"],
            parallel=parallel,
        ),
        limits=AnswerLimits(summary_bytes=summary_kb * 1024, list_bytes=listing_mb * MiB),
        prices_file=_relative(prices_file, path) if prices_file else None,
        path=path,
        check=parse_check(_table(data, "check", where), where),
        ssm=parse_ssm(_table(data, "ssm", where), where),
    )


SSM_VIA = ("ssh", "ssm", "auto")


def parse_ssm(table: dict[str, Any], where: str = "config") -> SsmConfig:
    """The ``[ssm]`` section; errors name ``where`` and the key.

    Example:
        >>> parse_ssm({"via": "auto", "output_s3": "logs/natfleet"}).via
        'auto'
    """
    d = SsmConfig()
    keys = {"via", "output_s3", "max_concurrency", "max_errors", "parallel", "probe_timeout"}
    _only(table, keys | {"eic"}, where, "ssm.")
    via = _get(table, "via", str, d.via, where, "ssm")
    if via not in SSM_VIA:
        raise ConfigError(f"{where}: ssm.via must be one of {', '.join(SSM_VIA)}, not {via!r}")
    texts = {}
    for key in ("max_concurrency", "max_errors"):
        texts[key] = str(_get(table, key, (str, int), getattr(d, key), where, "ssm"))
        if not re.fullmatch(r"[0-9]{1,7}%?", texts[key]):
            raise ConfigError(f"{where}: ssm.{key} must be a number or a percentage like '10%'")
    parallel = _get(table, "parallel", int, d.parallel, where, "ssm")
    probe = float(_get(table, "probe_timeout", (int, float), d.probe_timeout, where, "ssm"))
    if parallel < 1 or probe <= 0:
        raise ConfigError(f"{where}: ssm.parallel must be at least 1, ssm.probe_timeout > 0")
    return SsmConfig(
        via=via,
        output_s3=_get(table, "output_s3", str, d.output_s3, where, "ssm"),
        max_concurrency=texts["max_concurrency"],
        max_errors=texts["max_errors"],
        parallel=parallel,
        probe_timeout=probe,
        eic=_get(table, "eic", bool, d.eic, where, "ssm"),
    )


def load_prices(config: Optional[Config] = None) -> Prices:
    """The price list from ``[prices] file``, else the built-in us-east-1 estimates.

    Example:
        >>> load_prices().instance_hourly["t4g.nano"]
        0.0042
    """
    path = config.prices_file if config else None
    if path is None:
        return Prices()
    return parse_prices(_read_toml(path), path)


def parse_prices(data: dict[str, Any], path: Optional[Path] = None) -> Prices:
    """A :class:`Prices` from parsed TOML (the layout of config/prices.toml)."""
    where = str(path or "prices")
    _only(data, {"region", "currency", "estimate", "nat_gateway", "instance_hourly"}, where, "")
    base = Prices()
    gw = _table(data, "nat_gateway", where)
    _only(gw, {"hourly", "per_gb_processed"}, where, "nat_gateway.")
    hourly = _table(data, "instance_hourly", where)
    for itype, price in hourly.items():
        if not isinstance(price, (int, float)) or isinstance(price, bool) or price < 0:
            raise ConfigError(f"{where}: instance_hourly.{itype} must be a price, not {price!r}")
    num = (int, float)
    return Prices(
        region=_get(data, "region", str, base.region, where, ""),
        currency=_get(data, "currency", str, base.currency, where, ""),
        nat_gateway_hourly=float(
            _get(gw, "hourly", num, base.nat_gateway_hourly, where, "nat_gateway")
        ),
        nat_gateway_per_gb=float(
            _get(gw, "per_gb_processed", num, base.nat_gateway_per_gb, where, "nat_gateway")
        ),
        instance_hourly={k: float(v) for k, v in hourly.items()} or base.instance_hourly,
        estimate=_get(data, "estimate", bool, True, where, ""),
        path=path,
    )


def _env(name: str) -> Optional[str]:
    return os.environ.get(name) or None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc


def _relative(value: str, config_path: Optional[Path]) -> Path:
    p = Path(value).expanduser()
    if not p.is_absolute() and config_path is not None:
        p = config_path.parent / p
    return p


def _only(table: dict[str, Any], allowed: set[str], where: str, prefix: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {prefix}{unknown[0]} (known: {', '.join(sorted(allowed))})"
        )


def _table(data: dict[str, Any], name: str, where: str) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: [{name}] must be a table")
    return value


def _get(table: dict[str, Any], key: str, kind: Any, default: Any, where: str, section: str) -> Any:
    if key not in table:
        return default
    value = table[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    bad_bool = isinstance(value, bool) and bool not in kinds
    if bad_bool or not isinstance(value, kinds):
        names = " or ".join(k.__name__ for k in kinds)
        name = f"{section}.{key}" if section else key
        raise ConfigError(f"{where}: {name} must be {names}, not {value!r}")
    return value
