"""Riding out an object-storage outage: which errors are worth another try, and trying again with
exponential backoff within a time budget (RetryPolicy, 180 s by default), then failing with one error
that names the endpoint, the bucket and the budget.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

log = logging.getLogger("edgetune.storage")

T = TypeVar("T")


class StorageError(RuntimeError):
    """Object storage could not be used; the message names the endpoint and bucket, never credentials."""


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff (`first_delay_s`, doubling up to `max_delay_s`) until `budget_s` seconds have
    passed since the first try; `attempts`, when set, also caps the number of tries. The budget is checked
    between tries: one try can take longer on its own (pyarrow's request timeout is 30 s, 3 tries)."""

    attempts: int | None = None
    first_delay_s: float = 1.0
    max_delay_s: float = 15.0
    budget_s: float = 180.0


# The storage answered, and answering again will not change it: no retry.
_FINAL_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)

_FINAL_AWS_ERRORS = re.compile(
    r"AWS Error (ACCESS_DENIED|NO_SUCH_BUCKET|NO_SUCH_KEY|NO_SUCH_UPLOAD|INVALID_ACCESS_KEY_ID|"
    r"SIGNATURE_DOES_NOT_MATCH|INVALID_PARAMETER_VALUE|MISSING_PARAMETER|RESOURCE_NOT_FOUND)"
    r"|HTTP status 4(?!08|29)\d\d"  # 4xx but request timeout (408) and too many requests (429)
)


def is_transient(error: BaseException) -> bool:
    """Whether `error` may go away by itself: refused, reset or timed-out connections, 5xx, throttling.
    Not found, access denied and other definite answers of the storage are final."""
    if not isinstance(error, OSError) or isinstance(error, _FINAL_ERRORS):
        return False
    return _FINAL_AWS_ERRORS.search(str(error)) is None


def with_retries(action: Callable[[], T], what: str, policy: RetryPolicy, *, wrap_final: bool = True) -> T:
    """Run `action`, retrying transient OSErrors with exponential backoff within the policy's budget; then
    raise StorageError naming `what` (which names the endpoint), the tries and the budget. A final error
    (not found, access denied) is raised at once: as StorageError, or unchanged when not `wrap_final`."""
    started = time.monotonic()
    delay = policy.first_delay_s
    attempt = 0
    while True:
        attempt += 1
        try:
            return action()
        except OSError as err:
            if not is_transient(err):
                if wrap_final:
                    raise StorageError(f"{what}: {err}") from err
                raise
            elapsed = time.monotonic() - started
            remaining = policy.budget_s - elapsed
            out_of_attempts = policy.attempts is not None and attempt >= policy.attempts
            if out_of_attempts or remaining <= 0:
                budget = f"{policy.attempts} attempts" if out_of_attempts else f"{policy.budget_s:.0f} s"
                # Not chained: the one-line root cause users see (train._root_cause) must be this message.
                raise StorageError(
                    f"{what} failed after {attempt} attempts in {elapsed:.0f} s (retry budget {budget}): {err}"
                ) from None
            pause = min(delay, remaining)
            log.warning(
                "%s failed (attempt %d, %.0f s of a %.0f s budget): %s; retrying in %.1f s",
                what,
                attempt,
                elapsed,
                policy.budget_s,
                err,
                pause,
            )
            time.sleep(pause)
            delay = min(delay * 2, policy.max_delay_s)


_S3_ERROR_CODE = re.compile(r"\((\w+)\)")

_S3_FINAL_CODES = {
    "AccessDenied": PermissionError,
    "InvalidAccessKeyId": PermissionError,
    "SignatureDoesNotMatch": PermissionError,
    "NoSuchBucket": FileNotFoundError,
    "NoSuchKey": FileNotFoundError,
}


def as_os_error(error: Exception) -> OSError:
    """A boto3/botocore error as the OSError `with_retries` understands: a definite answer of the storage
    (access denied, no such bucket, another 4xx) becomes a final error, anything else a transient one."""
    status = getattr(error, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    match = _S3_ERROR_CODE.search(str(error))
    code = match.group(1) if match else ""
    if code in _S3_FINAL_CODES:
        return _S3_FINAL_CODES[code](f"{code}: {error}")
    if 400 <= status < 500 and status not in (408, 429):
        return PermissionError(f"HTTP {status}: {error}")
    return ConnectionError(str(error))
