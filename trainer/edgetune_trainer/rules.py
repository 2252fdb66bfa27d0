"""The formats the API accepts, shared by every spec model: names and labels (Kubernetes' rules),
storage and model/data URIs, endpoints, quantities, the `freeze` forms. Each check says what is wrong and
what is allowed; `schema_only` puts the same rule into the generated CRD for the API server.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field

from edgetune_trainer.problems import show_input

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

_LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")

_HF_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")

_HF_SPLIT = re.compile(r"^[A-Za-z0-9_]+(\[[0-9:%-]*\])?$")

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

_ENDPOINT = re.compile(r"^https?://[A-Za-z0-9.\-\[\]:]+(:[0-9]{1,5})?/?$")


def check_dns_label(value: str, max_length: int = 63) -> str:
    if len(value) > max_length:
        raise ValueError(f"must be at most {max_length} characters (got {len(value)})")
    if not _DNS_LABEL.match(value):
        raise ValueError(
            "must be a DNS-1123 label: lowercase letters, digits and '-', starting and ending with a "
            f"letter or digit (got {show_input(value)})"
        )
    return value


def check_label_key(key: str) -> str:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not all(_DNS_LABEL.match(p) for p in prefix.split("."))):
        raise ValueError(f"label key {show_input(key)} has an invalid prefix (must be a DNS subdomain)")
    if not name or len(name) > 63 or not _LABEL_NAME.match(name):
        raise ValueError(f"label key {show_input(key)} is invalid (name part: 1-63 of A-Z a-z 0-9 - _ .)")
    return key


def check_label_value(value: str) -> str:
    if len(value) > 63 or not _LABEL_NAME.match(value):
        raise ValueError(
            f"label value {show_input(value)} is invalid (at most 63 of A-Z a-z 0-9 - _ ., alphanumeric ends)"
        )
    return value


def _check_node_selector(selector: dict[str, str]) -> dict[str, str]:
    for key, value in selector.items():
        check_label_key(key)
        check_label_value(value)
    return selector


def check_object_key(key: str, what: str) -> str:
    """An object-store key or prefix: relative, no '.'/'..' segments, printable: keys stay under their prefix."""
    if key.startswith("/") or "\\" in key:
        raise ValueError(f"{what} must be a relative key with '/' separators (got {show_input(key)})")
    if any(not ch.isprintable() for ch in key):
        raise ValueError(f"{what} must not contain control characters")
    if any(part in (".", "..") for part in key.split("/")):
        raise ValueError(f"{what} must not contain '.' or '..' segments (got {show_input(key)})")
    return key


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """'s3://bucket/a/b/' -> ('bucket', 'a/b'), with the bucket name and key checked."""
    if not uri.startswith("s3://"):
        raise ValueError(f"must be an s3:// URI (got {show_input(uri)})")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"s3 URI {show_input(uri)} has no bucket: write s3://BUCKET/prefix")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise ValueError(
            f"s3 bucket {show_input(bucket)} is not a valid bucket name (3-63 lowercase letters, digits, '.', '-')"
        )
    return bucket, check_object_key(key.strip("/"), "the s3 key")


_MODEL_SCHEMES = ("hf://", "torchvision://", "s3://", "file://")

_DATA_SCHEMES = ("hf://", "s3://", "file://")


def _check_source(value: str, schemes: tuple[str, ...], what: str) -> str:
    if not value.strip():
        raise ValueError(f"{what} must not be empty")
    if any(not ch.isprintable() for ch in value):
        raise ValueError(f"{what} must not contain control characters")
    scheme, sep, rest = value.partition("://")
    if not sep:
        return value  # a local path: relative paths resolve against the job file's folder
    if f"{scheme}://" not in schemes:
        allowed = ", ".join(schemes)
        raise ValueError(f"{what} scheme '{scheme}://' is not supported; use {allowed} or a local path")
    if scheme == "s3":
        parse_s3_uri(value)
    elif scheme == "hf":
        name, _, split = rest.partition(":")
        name = name.split("@", 1)[0]
        if not _HF_ID.match(name) or (split and what == "model source"):
            form = "hf://[ORG/]NAME[@REVISION]" if what == "model source" else "hf://[ORG/]NAME[:SPLIT]"
            raise ValueError(f"{show_input(value)} is not a Hugging Face id: write {form}")
        if split and not _HF_SPLIT.match(split):
            raise ValueError(
                f"{show_input(value)}: split {show_input(split)} must look like train, test or train[:10%]"
            )
    elif scheme == "torchvision" and not _IDENTIFIER.match(rest.split("@", 1)[0]):
        raise ValueError(f"{show_input(value)} is not a torchvision model: write torchvision://resnet18[@WEIGHTS]")
    elif scheme == "file" and not rest.startswith("/"):
        raise ValueError(f"{show_input(value)} must be an absolute file:///path")
    return value


def _model_source(value: str) -> str:
    return _check_source(value, _MODEL_SCHEMES, "model source")


def _data_source(value: str) -> str:
    return _check_source(value, _DATA_SCHEMES, "dataset source")


def check_storage_uri(value: str) -> str:
    if value.startswith("s3://"):
        parse_s3_uri(value)
        return value
    if value.startswith("file:///"):
        return value
    raise ValueError(f"must be s3://BUCKET/prefix (or file:///path for local runs); got {show_input(value)}")


def check_endpoint(value: str) -> str:
    if not _ENDPOINT.match(value):
        raise ValueError(f"must be an http(s)://host[:port] URL (got {show_input(value)})")
    return value


def check_freeze(value: str) -> str:
    if value in ("none", "backbone"):
        return value
    kind, _, count = value.partition(":")
    if kind == "layers" and count.isdigit() and int(count) >= 1:
        return value
    raise ValueError(
        f"must be 'none', 'backbone' or 'layers:N' with N >= 1 top blocks to train (got {show_input(value)})"
    )


def schema_only(**keywords: Any) -> Any:
    """Constraints for the generated CRD (the API server enforces them) that pydantic checks through a
    validator with a clearer message instead."""
    return Field(json_schema_extra=keywords)


DNS_LABEL_SCHEMA = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"

DnsLabel = Annotated[str, schema_only(maxLength=63, pattern=DNS_LABEL_SCHEMA), AfterValidator(check_dns_label)]

NodeSelector = Annotated[dict[str, str], AfterValidator(_check_node_selector)]

# A Kubernetes quantity such as 512Mi, 16Gi, 500m or 1.5G (core/v1 resource.Quantity, binary and decimal SI).
_QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"


def _quantity(value: str) -> str:
    if not re.match(_QUANTITY, value):
        raise ValueError(f"must be a Kubernetes quantity such as 4Gi, 512Mi, 500m or 2 (got {show_input(value)})")
    return value


Quantity = Annotated[str, schema_only(pattern=_QUANTITY, maxLength=32), AfterValidator(_quantity)]

ModelSource = Annotated[str, Field(min_length=1, max_length=1024), AfterValidator(_model_source)]

DataSource = Annotated[str, Field(min_length=1, max_length=1024), AfterValidator(_data_source)]

FieldName = Annotated[str, Field(min_length=1, max_length=256)]

Task = Literal["text-classification", "image-classification"]

Precision = Literal["fp32", "bf16", "fp16"]
