"""The one place natfleet makes boto3 sessions and clients, and turns AWS failures into advice.

Every AWS call goes through :func:`call` or :func:`paginate`, which translate botocore's
exceptions into :class:`natfleet.errors.AwsError` with a message saying what to do.

Example:
    >>> session = make_session(profile="prod", region="eu-west-1")
    >>> ec2 = client(session, "ec2")
    >>> for page in paginate(ec2, "describe_instances"):
    ...     print(len(page["Reservations"]))
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Iterator, Sequence
from typing import Any, Optional

import boto3
import botocore
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ProfileNotFound,
)
from botocore.parsers import ResponseParserError

from natfleet.errors import AwsError, UsageError

RETRY_CONFIG = Config(retries={"mode": "adaptive", "max_attempts": 10})

NO_CREDENTIALS = (
    "no AWS credentials: set AWS_PROFILE or run 'aws configure' (or pass --profile), "
    "or use --host/--local to read boxes without AWS"
)
NO_REGION = (
    "no AWS region: pass --region REGION (or --region all), set AWS_REGION, "
    "or add 'region' to your profile in ~/.aws/config"
)

# IAM action prefixes for botocore service names that differ from them.
_IAM_PREFIX = {"monitoring": "cloudwatch"}
_DENIED = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "Unauthorized"}
_BAD_CREDENTIALS = {
    "AuthFailure",
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "ExpiredTokenException",
    "RequestExpired",
}
# Regions a plain describe_regions lists (moto also lists "not-opted-in" ones).
_ENABLED_REGION = {"opt-in-not-required", "opted-in"}


def make_session(profile: Optional[str] = None, region: Optional[str] = None) -> boto3.Session:
    """A boto3 session for ``profile`` (None: the default chain) and ``region``.

    Example:
        >>> make_session("prod", "us-east-1").region_name
        'us-east-1'
    """
    try:
        return boto3.Session(profile_name=profile, region_name=region)
    except ProfileNotFound as exc:
        raise AwsError(
            f"AWS profile {profile!r} not found: check the name with 'aws configure list-profiles' "
            "or create it with 'aws configure --profile NAME'"
        ) from exc


def static_session(access_key: str, secret_key: str, region: str) -> boto3.Session:
    """A session with explicit keys (the lab's fake ``testing`` credentials, never real ones).

    Example:
        >>> static_session("testing", "testing", "us-east-1")
    """
    return boto3.Session(
        aws_access_key_id=access_key, aws_secret_access_key=secret_key, region_name=region
    )


def client(
    session: boto3.Session,
    service: str,
    region: Optional[str] = None,
    endpoint_url: Optional[str] = None,
) -> Any:
    """A boto3 client with adaptive retries; ``region`` None means the session's region.

    ``endpoint_url`` is for the lab's moto server (``AWS_ENDPOINT_URL`` works too); with it,
    request compression is off (moto's server cannot read gzipped PutMetricData bodies).

    Example:
        >>> cw = client(session, "cloudwatch", "eu-west-1")
    """
    config = RETRY_CONFIG
    if endpoint_url:
        config = config.merge(Config(disable_request_compression=True))
    try:
        return session.client(service, region_name=region, endpoint_url=endpoint_url, config=config)
    except NoRegionError as exc:
        raise AwsError(NO_REGION) from exc
    except (ProfileNotFound, NoCredentialsError, PartialCredentialsError) as exc:
        raise translate(exc) from exc


def iam_action(aws_client: Any, operation: str) -> str:
    """IAM action name of a client method: ``describe_route_tables`` -> ``ec2:DescribeRouteTables``.

    ``operation`` may already be the API name (``DescribeRouteTables``).
    """
    model = aws_client.meta.service_model
    prefix = _IAM_PREFIX.get(model.endpoint_prefix, model.endpoint_prefix)
    api = aws_client.meta.method_to_api_mapping.get(operation, operation)
    return f"{prefix}:{api}"


def translate(exc: Exception, action: str = "", region: str = "") -> AwsError:
    """An :class:`AwsError` with advice for a botocore exception.

    Example:
        >>> str(translate(NoCredentialsError()))
        "no AWS credentials: set AWS_PROFILE or run 'aws configure' ..."
    """
    where = f" in {region}" if region else ""
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return AwsError(NO_CREDENTIALS)
    if isinstance(exc, NoRegionError):
        return AwsError(NO_REGION)
    if isinstance(exc, ProfileNotFound):
        return AwsError(f"{exc}: check the name with 'aws configure list-profiles'")
    if isinstance(exc, EndpointConnectionError):
        return AwsError(
            f"cannot reach {exc.kwargs.get('endpoint_url', 'the AWS endpoint')}: check the "
            "region name (--region), your network or proxy, and AWS_ENDPOINT_URL if set"
        )
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = error.get("Code", "")
        message = error.get("Message", "")
        if code in _DENIED:
            return AwsError(
                f"access denied for {action or exc.operation_name}{where}: grant it to your "
                "role or user (config/iam-policy.json lists every action natfleet needs)"
            )
        if code in _BAD_CREDENTIALS:
            return AwsError(
                f"AWS rejected the credentials ({code}{where}): refresh them "
                "('aws sso login' or 'aws configure'), or check the profile and region"
            )
        if code == "OptInRequired":
            return AwsError(f"region{where or ''} is not enabled for this account: skip it")
        return AwsError(f"{action or exc.operation_name}{where} failed: {code}: {message}")
    if isinstance(exc, ResponseParserError):
        return AwsError(
            f"{action or 'AWS call'}{where} failed: the endpoint's answer is not AWS's API "
            "(an error page?): check the region name (--region), AWS_ENDPOINT_URL if set, "
            "and any proxy"
        )
    if isinstance(exc, BotoCoreError):
        return AwsError(f"{action or 'AWS call'}{where} failed: {exc}")
    return AwsError(str(exc))


@contextlib.contextmanager
def translated(action: str = "", region: str = "") -> Iterator[None]:
    """Turn botocore exceptions raised inside the block into :class:`AwsError`."""
    try:
        yield
    except (BotoCoreError, ClientError, ResponseParserError) as exc:
        raise translate(exc, action, region) from exc


def _region(aws_client: Any) -> str:
    return str(aws_client.meta.region_name or "")


def call(aws_client: Any, operation: str, **kwargs: Any) -> dict[str, Any]:
    """``aws_client.<operation>(**kwargs)`` with translated errors.

    Example:
        >>> call(ec2, "describe_regions")["Regions"][0]["RegionName"]
    """
    with translated(iam_action(aws_client, operation), _region(aws_client)):
        return getattr(aws_client, operation)(**kwargs)


def paginate(aws_client: Any, operation: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
    """Every page of a paginated ``operation``, with translated errors.

    Example:
        >>> pages = paginate(ec2, "describe_route_tables", Filters=[{"Name": "vpc-id",
        ...                  "Values": ["vpc-0123"]}])
    """
    with translated(iam_action(aws_client, operation), _region(aws_client)):
        yield from aws_client.get_paginator(operation).paginate(**kwargs)


def list_regions(session: boto3.Session) -> list[str]:
    """Enabled regions of the account (``ec2:DescribeRegions``), sorted.

    Example:
        >>> list_regions(session)[:2]
        ['af-south-1', 'ap-northeast-1']
    """
    ec2 = client(session, "ec2", session.region_name or "us-east-1")
    regions = call(ec2, "describe_regions")["Regions"]
    return sorted(
        r["RegionName"] for r in regions if r.get("OptInStatus", "opted-in") in _ENABLED_REGION
    )


def resolve_regions(session: boto3.Session, regions: Optional[Sequence[str]] = None) -> list[str]:
    """The regions to scan: the given ones, every enabled one for ``all``, else the session's.

    Example:
        >>> resolve_regions(session, ["all"])     # -> list_regions(session)
        >>> resolve_regions(session, None)        # -> [session.region_name]
    """
    wanted = [r for r in (regions or []) if r]
    if any(r == "all" for r in wanted):
        return list_regions(session)
    if wanted:
        for name in wanted:
            check_region(session, name)
        return list(dict.fromkeys(wanted))
    if not session.region_name:
        raise AwsError(NO_REGION)
    check_region(session, session.region_name, where="")
    return [session.region_name]


def known_regions(session: boto3.Session) -> list[str]:
    """Every EC2 region of every partition this botocore knows (aws, aws-cn, aws-us-gov, ...),
    from its bundled endpoint data: no AWS call.

    Example:
        >>> "eu-west-1" in known_regions(session), "mars-1" in known_regions(session)
        (True, False)
    """
    found: set[str] = set()
    for partition in session.get_available_partitions():
        found.update(session.get_available_regions("ec2", partition_name=partition))
    return sorted(found)


def check_region(session: boto3.Session, name: str, where: str = "--region") -> None:
    """Raise a clear error for a region name AWS does not have (``--region mars-1``), before
    any call is made: a UsageError for ``--region``, an AwsError for the profile's or
    AWS_REGION's.

    Example:
        >>> check_region(session, "us-est-1")
        Traceback (most recent call last):
        natfleet.errors.UsageError: --region 'us-est-1': unknown AWS region: did you mean ...
    """
    known = known_regions(session)
    if not known or name in known:
        return
    near = difflib.get_close_matches(name, known, n=1, cutoff=0.7)
    hint = f": did you mean {near[0]!r}?" if near else ""
    origin = f"{where} {name!r}" if where else f"region {name!r} (AWS_REGION or the profile)"
    message = (
        f"{origin}: unknown AWS region{hint} (botocore {botocore.__version__} knows "
        f"{len(known)}, e.g. us-east-1, eu-west-1; --region all scans every enabled one; "
        "a region newer than your boto3 needs 'pip install -U boto3')"
    )
    raise UsageError(message) if where else AwsError(message)
