"""Errors a user can act on, and the one way every command line reports them.

A `UserError` is a problem with what the user gave (a flag, a file, a data set), or a failure whose message
says all there is to say. Every command prints it in a line or two, without a traceback, and exits 1 (2 for a
`UsageError`: a flag value out of range, or flags that do not go together). A user error raised in a Ray task,
actor or Train worker is found inside the error Ray hands back. Any other exception is an internal error and
keeps its traceback; `--debug` (or RAYTRAIN_DEBUG=1) shows the traceback of user errors too.

The classes derive from ValueError (`NotFound` also from FileNotFoundError), so code that catches those still
catches them.
"""
from __future__ import annotations

import os
import re
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

DEBUG_FLAG = "--debug"
DEBUG_ENV = "RAYTRAIN_DEBUG"
DEBUG_HELP = f"{DEBUG_FLAG} (or {DEBUG_ENV}=1): show the traceback of an error"


class UserError(ValueError):
    """A problem the message fully explains (exit status 1)."""

    exit_code = 1


class UsageError(UserError):
    """A flag value out of range, or flags that do not go together (exit status 2)."""

    exit_code = 2


class NotFound(UserError, FileNotFoundError):
    """A file or folder the user named does not exist."""


def storage_problem(e: BaseException) -> str:
    """An OSError from a filesystem in one line; the S3 errors a user can act on (endpoint, bucket,
    credentials) said in words, with the setting that fixes them."""
    text = " ".join(str(e).split())
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if "NETWORK_CONNECTION" in text or "Could not connect" in text or "Couldn't resolve host" in text:
        where = f"the S3 endpoint {endpoint} (AWS_ENDPOINT_URL)" if endpoint else "the S3 endpoint"
        return f"cannot reach {where}: nothing answers there"
    bucket = re.search(r"[Bb]ucket '([^']+)' not found|NoSuchBucket|NO_SUCH_BUCKET", text)
    if bucket:
        return f"the bucket {bucket[1] + ' ' if bucket[1] else ''}does not exist"
    if re.search(r"ACCESS_DENIED|AccessDenied|InvalidAccessKeyId|SignatureDoesNotMatch|INVALID_ACCESS_KEY|"
                 r"SIGNATURE_DOES_NOT_MATCH|HTTP response code: 403", text):
        return ("the S3 server refused the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or the "
                "profile in AWS_PROFILE)")
    return text


def find_user_error(error: BaseException) -> UserError | None:
    """The UserError behind `error`: itself, its explicit cause (`raise ... from`), what a Ray task raised
    (`.cause`), or what a Train worker raised (`.worker_failures`); None for an internal error."""
    stack, seen = [error], set()
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        cause = getattr(e, "cause", None)
        if isinstance(cause, BaseException):  # a RayTaskError: its own text holds the remote traceback
            stack.append(cause)
            continue
        if isinstance(e, UserError):
            return e
        failures = getattr(e, "worker_failures", None)
        if isinstance(failures, dict):
            stack += [f for f in failures.values() if isinstance(f, BaseException)]
        stack.append(e.__cause__)
    return None


def debug_requested(argv: Sequence[str]) -> bool:
    return DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def run_cli(main: Callable[[list[str]], Any], argv: Sequence[str] | None = None, prog: str | None = None
            ) -> int:
    """Run `main(argv)` (argv without `--debug`) and return the exit status: a user error is printed as
    `<prog>: error: <message>`; an internal error (or any error under --debug) propagates with its traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = prog or os.path.basename(sys.argv[0])
    debug = debug_requested(argv)
    try:
        status = main([a for a in argv if a != DEBUG_FLAG])
        return status if isinstance(status, int) else 0  # a main may return its result instead
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        return 130
    except Exception as e:  # noqa: BLE001 - re-raised unless it is a user error
        user = find_user_error(e)
        if user is None or debug:
            raise
        print(f"{prog}: error: {user}", file=sys.stderr, flush=True)
        return user.exit_code


@contextmanager
def naming(flag: str, value: str) -> Iterator[None]:
    """Re-raise a UserError, or an OSError reading an input, with the flag that named the input."""
    try:
        yield
    except UserError as e:
        if str(e).startswith(flag):
            raise
        raise type(e)(f"{flag}: {e}" if str(value) in str(e) else f"{flag} {value}: {e}") from None
    except OSError as e:
        raise UserError(f"{flag} {value}: {storage_problem(e)}") from None
