"""One kind of user-facing error, and the wrappers that turn it (and Hydra's own errors) into one clear line
and exit code 2.

An app's entry point is decorated as

    @hydra_errors_exit                      # Hydra's errors: unknown group option or key, bad override syntax
    @hydra.main(...)
    @user_errors_exit                       # VRSError / ConfigError raised by the app
    def main(cfg): ...
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import sys
from typing import Any, Callable, Iterable


class VRSError(Exception):
    """An error caused by the user's input (config, path, checkpoint, data): shown as one line."""


class ConfigError(VRSError):
    """A config value is not allowed. The message names the key, the bad value and what is allowed."""

    def __init__(self, key: str, value: Any, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={shown(value)} is not allowed: {allowed}")


def shown(value: Any) -> str:
    """A value as the user wrote it: repr, but a whole float as an integer (a typed config's float field holds
    `defense.lam=2` as 2.0)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
        return repr(int(value))
    return repr(value)


def check(ok: bool, key: str, value: Any, allowed: str) -> None:
    """Raise ConfigError(key, value, allowed) unless ok."""
    if not ok:
        raise ConfigError(key, value, allowed)


def check_choice(key: str, value: Any, choices: Iterable[Any]) -> None:
    choices = list(choices)
    check(value in choices, key, value, "one of " + ", ".join(map(str, choices)))


def first_line(err: BaseException, limit: int | None = None) -> str:
    """The first line of err's message, at most `limit` characters (its type's name when it says nothing):
    a library's multi-line error inside one of our one-line VRSErrors."""
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:limit]


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
        except Exception as exc:  # only user errors are caught; the rest is re-raised
            err = find_user_error(exc)
            if err is None or os.environ.get("VRS_FULL_ERROR"):
                raise
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)

    _APP_FRAMES.add(wrapper.__code__)
    return wrapper


_APP_FRAMES: set = set()  # code objects of user_errors_exit wrappers: a traceback through one comes from an app


def _raised_in_app(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code in _APP_FRAMES:
            return True
        tb = tb.tb_next
    return False


def describe_hydra_error(exc: BaseException) -> str:
    """One line for an error Hydra raises while composing the config, naming the key, the bad value and what
    is allowed where Hydra's exception says so."""
    # deferred: only a failed start needs them
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

    text = str(exc)
    if isinstance(exc, MissingConfigException):
        missing = re.search(r"Could not find '([^']+)'", text)
        group = re.search(r"Available options in '([^']+)'", text)
        if missing and group and exc.options:
            option = missing.group(1)[len(group.group(1)) + 1:]
            return (f"{group.group(1)}={option!r} is not allowed: one of {', '.join(exc.options)} "
                    f"(conf/{group.group(1)}/)")
        if missing:
            return f"config {missing.group(1)!r} not found ({text.splitlines()[0]})"
    if isinstance(exc, OverrideParseException):
        why = (exc.message or text).splitlines()
        why = [w for w in why if not w.startswith("See https://")]
        return (f"cannot parse the override {exc.override!r}: {'; '.join(why)} (overrides are key=value, "
                "+key=value to add a key, ~key to delete one)")
    cause = exc.__cause__
    typed = typed_field_error(cause, text) if isinstance(exc, ConfigCompositionException) else None
    if typed:
        return typed
    if isinstance(exc, ConfigCompositionException) and cause is not None and getattr(cause, "full_key", None):
        key = cause.full_key
        add = re.search(r"use \+(\S+)", text)
        value = add.group(1).split("=", 1)[1] if add and "=" in add.group(1) else None
        parent = getattr(cause, "parent_node", None)
        keys = ", ".join(str(k) for k in parent.keys() if k != "hydra") if hasattr(parent, "keys") else None
        where = key.rpartition(".")[0] or "the config"
        allowed = f"a key of {where}" + (f": one of {keys}" if keys else "")
        if add and not dataclasses.is_dataclass(getattr(cause, "object_type", None)):  # a typed node takes no new key
            allowed += f" (to add a new key write +{add.group(1)})"
        return f"{key}{'=' + value if value is not None else ''} is not allowed: {allowed}"
    if isinstance(exc, OSError) and exc.filename:
        return f"cannot write {exc.filename}: {exc.strerror or exc}"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if isinstance(exc, ConfigCompositionException) and cause is not None:
        lines += [ln.strip() for ln in str(cause).splitlines() if ln.strip()]
    message = "; ".join(lines) or type(exc).__name__
    args = " ".join(sys.argv[1:])
    return f"{message} (while composing the config{f' from: {args}' if args else ''})"


_TYPE_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}


def _type_in_words(annotation: str) -> str:
    """A typed config field's annotation (a string: the modules use `from __future__ import annotations`) in words."""
    inner = re.fullmatch(r"Optional\[(.+)\]", annotation)
    if inner:
        return "null or " + _type_in_words(inner.group(1))
    inner = re.fullmatch(r"List\[(.+)\]", annotation)
    if inner:
        return "a list, each " + _type_in_words(inner.group(1))
    return _TYPE_WORDS.get(annotation, annotation)


def typed_field_error(cause: BaseException | None, text: str) -> str | None:
    """One line for OmegaConf's refusal, while Hydra composes, of a value that a typed config's field (vrs.config)
    cannot take (`certify.n=1.5`: not an integer) or of deleting one of its keys (`~certify.n`): the key, the value
    and what the field allows (its rule, else its type)."""
    from omegaconf.errors import ConfigTypeError, ValidationError  # deferred: only a failed start needs them

    key, owner = getattr(cause, "full_key", None), getattr(cause, "object_type", None)
    if not isinstance(cause, (ValidationError, ConfigTypeError)) or not key or not dataclasses.is_dataclass(owner):
        return None
    if "does not support deletion" in str(cause):
        return (f"{key} cannot be deleted: every key of {key.rpartition('.')[0] or 'the config'} is needed (the typed "
                f"config {owner.__name__}, {owner.__module__}); set it to another value instead")
    field = {f.name: f for f in dataclasses.fields(owner)}.get(key.rpartition(".")[2])
    if field is None:
        return None
    rule = field.metadata.get("rule")
    allowed = rule.allowed if rule is not None else _type_in_words(str(field.type))
    override = re.search(r"override (\S+?)=(.*)$", text.splitlines()[0]) if text else None
    value = f"={override.group(2)}" if override and override.group(1).lstrip("+") == key else ""
    return f"{key}{value} is not allowed: {allowed}"


def hydra_errors_exit(hydra_main: Callable) -> Callable:
    """Outermost decorator of an app's entry point: an error Hydra raises before the app starts (an unknown
    config group option or key, an override it cannot parse, a run directory it cannot create) becomes one
    `error: <message>` line on stderr and exit code 2, like a VRSError. Errors from inside the app are
    left as they are (user_errors_exit has dealt with the user's ones; the rest are bugs: full traceback).

    Set VRS_FULL_ERROR=1 or HYDRA_FULL_ERROR=1 to see Hydra's own report instead.
    """

    @functools.wraps(hydra_main)
    def wrapper(*args, **kwargs):
        if os.environ.get("VRS_FULL_ERROR") or os.environ.get("HYDRA_FULL_ERROR"):
            return hydra_main(*args, **kwargs)
        os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises instead of printing its multi-line report
        try:
            return hydra_main(*args, **kwargs)
        except Exception as exc:  # errors from the app itself are re-raised untouched
            if _raised_in_app(exc):
                raise
            print(f"error: {describe_hydra_error(exc)}", file=sys.stderr)
            sys.exit(2)
        finally:
            os.environ.pop("HYDRA_FULL_ERROR", None)

    return wrapper
