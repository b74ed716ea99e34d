"""One kind of user-facing error, and the wrapper that turns it into one clear line and exit code 2."""

from __future__ import annotations

import functools
import os
import sys
from typing import Any, Callable, Iterable


class VRSError(Exception):
    """An error caused by the user's input (config, path, checkpoint, data): shown as one line."""


class ConfigError(VRSError):
    """A config value is not allowed. The message names the key, the bad value and what is allowed."""

    def __init__(self, key: str, value: Any, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={value!r} is not allowed: {allowed}")


def check(ok: bool, key: str, value: Any, allowed: str) -> None:
    """Raise ConfigError(key, value, allowed) unless ok."""
    if not ok:
        raise ConfigError(key, value, allowed)


def check_choice(key: str, value: Any, choices: Iterable[Any]) -> None:
    choices = list(choices)
    check(value in choices, key, value, "one of " + ", ".join(map(str, choices)))


def find_user_error(err: BaseException | None) -> VRSError | None:
    """The VRSError behind err, if any: Hydra's instantiate() wraps errors raised by a `_target_` in an
    InstantiationException (`raise ... from err`, nested once per level), so follow the cause chain."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, VRSError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def user_errors_exit(fn: Callable) -> Callable:
    """Decorator for app entry points: a VRSError, raised directly or from inside Hydra's instantiate(),
    becomes `error: <message>` on stderr and exit code 2.

    Set VRS_FULL_ERROR=1 to see the traceback instead.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - only user errors are caught; the rest is re-raised
            err = find_user_error(exc)
            if err is None or os.environ.get("VRS_FULL_ERROR"):
                raise
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)

    return wrapper
