"""What a config value may be, in words: the rules of the typed configs (vrs.config).

A `Rule` is a test and the phrase that says what it allows; a typed config names its field's rule with
`key(rule)`, and `Checked.__post_init__` raises errors.py's one line for the first field that breaks its rule:

    certify.alpha=1.5 is not allowed: a number in (0, 1)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, replace
from typing import Any, Callable, ClassVar

from vrs.errors import ConfigError, VRSError, check

HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}


@dataclass(frozen=True)
class Rule:
    ok: Callable[[Any], bool]
    allowed: str
    required: bool = False  # the key must be present (keys of the apps' own nodes)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _show(v: Any) -> str:
    return {True: "true", False: "false", None: "null"}.get(v, str(v)) if isinstance(v, (bool, type(None))) else str(v)


def integer(min: int | None = None, max: int | None = None, why: str = "") -> Rule:
    return Rule(lambda v: _is_int(v) and (min is None or v >= min) and (max is None or v <= max),
                "an integer" + ("" if min is None else f" >= {min}") + ("" if max is None else f" and <= {max}") + why)


def number(gt: float | None = None, ge: float | None = None, lt: float | None = None, le: float | None = None) -> Rule:
    def ok(v):
        return (_is_num(v) and (gt is None or v > gt) and (ge is None or v >= ge) and (lt is None or v < lt)
                and (le is None or v <= le))

    lo, hi = gt if gt is not None else ge, lt if lt is not None else le
    if lo is not None and hi is not None:
        text = f"a number in {'(' if gt is not None else '['}{lo:g}, {hi:g}{')' if lt is not None else ']'}"
    elif lo is not None:
        text = f"a number {'>' if gt is not None else '>='} {lo:g}"
    elif hi is not None:
        text = f"a number {'<' if lt is not None else '<='} {hi:g}"
    else:
        text = "a finite number"
    return Rule(ok, text)


def one_of(*choices: Any) -> Rule:
    """Exactly one of the choices (true is not 1, "1" is not 1)."""
    return Rule(lambda v: any(type(v) is type(c) and v == c for c in choices),
                "one of " + ", ".join(map(_show, choices)))


def optional(rule: Rule, null_means: str = "") -> Rule:
    return Rule(lambda v: v is None or rule.ok(v), f"null{null_means} or {rule.allowed}")


def either(*rules: Rule) -> Rule:
    return Rule(lambda v: any(r.ok(v) for r in rules), " or ".join(r.allowed for r in rules))


def list_of(rule: Rule, nonempty: bool = True, distinct: bool = False, length: str | None = None) -> Rule:
    def ok(v):
        return (isinstance(v, list) and (len(v) > 0 or not nonempty) and all(rule.ok(x) for x in v)
                and (not distinct or len(set(map(repr, v))) == len(v)))

    kind = ("a non-empty list" if nonempty else "a list") + (" without repeats" if distinct else "")
    return Rule(ok, f"{kind}{length or ''}, each {rule.allowed}")


def required(rule: Rule) -> Rule:
    return replace(rule, required=True)


BOOL = Rule(lambda v: isinstance(v, bool), "true or false")
TEXT = Rule(lambda v: isinstance(v, str) and v != "", "a non-empty string")
PROBABILITY = number(gt=0, lt=1)
LAMBDA = number(ge=0, le=1)
SPLIT = one_of("test", "val", "train")
AUTO_BOOL = one_of("auto", True, False)
COMPILE = Rule(lambda v: isinstance(v, (bool, str, dict)), "false, true, a torch.compile mode "
               "(default, reduce-overhead, max-autotune, ...) or a dict of torch.compile arguments")
# Whether the file exists and fits is vrs.preflight's (vrs.checkpoint's) business.
CKPT_PATH = Rule(lambda v: isinstance(v, str) and v != "", "the path of a vrs-train checkpoint "
                 "(<run dir>/checkpoints/last.ckpt)")
DEVICE = Rule(lambda v: isinstance(v, str) and (v in ("auto", "cpu", "cuda") or
                                                (v.startswith("cuda:") and v[5:].isdigit())),
              "auto, cpu, cuda or cuda:<index>")
INDICES = list_of(integer(0), distinct=True)
# Lightning's seed_everything replaces a seed outside numpy's range with 0 (a warning only); numpy takes 32 bits.
SEED = integer(0, 2**32 - 1, " (numpy's seed range)")


# ---- typed configs -------------------------------------------------------------------------------------------
class _Absent:
    """The value of a field whose key the node does not hold (`key(rule, absent_ok=True)`)."""

    def __repr__(self) -> str:
        return "<absent>"


ABSENT: Any = _Absent()


def key(rule: Rule | None, absent_ok: bool = False) -> Any:
    """A typed config's field with the rule its value must meet (its type is the annotation; no default: the
    value comes from the yaml file, one place). absent_ok: a key that a node may leave out (a `_target_` node's
    optional parameter, a top-level key some apps lack); its field is then ABSENT and no rule runs."""
    return dataclasses.field(default=ABSENT, metadata={"rule": rule}) if absent_ok else dataclasses.field(
        metadata={"rule": rule})


@dataclass
class Checked:
    """Base of the typed configs: OmegaConf.to_object builds the dataclass, and __post_init__ checks every
    field's rule (`key(rule)`), naming `<NODE>.<field>`. A subclass adds its cross-field rules after
    `super().__post_init__()`."""

    NODE: ClassVar[str] = ""
    # Checked.of: no key beyond the fields. An open node's other keys are its `_target_`'s parameters (checked by
    # signature: vrs.config.tree.check_targets), or, at the top level, the app's nodes.
    CLOSED: ClassVar[bool] = True

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            rule = f.metadata.get("rule")
            value = getattr(self, f.name)
            if rule is not None and value is not ABSENT:
                check(rule.ok(value), self.key_name(f.name), value, rule.allowed)

    def given(self) -> dict[str, Any]:
        """The fields the node holds (ABSENT ones left out), as a dict."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not ABSENT}

    @classmethod
    def key_name(cls, field: str) -> str:
        return f"{cls.NODE}.{field}" if cls.NODE else field

    @classmethod
    def check_keys(cls, node: Any) -> None:
        """Hydra's `+node.key=...` adds a key even to a typed node (and OmegaConf.to_object drops it without a
        word): every key must be a field."""
        fields = [f.name for f in dataclasses.fields(cls)]
        for k in node:
            if k not in fields and k not in HYDRA_KEYS:
                raise ConfigError(cls.key_name(str(k)), node[k], f"a key of {cls.NODE}: one of {', '.join(fields)}")

    @classmethod
    def of(cls, node: Any) -> Checked:
        """A node that Hydra has not typed (a plain dict: the top level, a `_target_` node whose other keys are its
        target's parameters, the attack node) as this dataclass, every rule checked."""
        fields = dataclasses.fields(cls)
        if not isinstance(node, dict):
            raise ConfigError(cls.NODE, node, f"a config node with keys {', '.join(f.name for f in fields)}")
        if cls.CLOSED:
            cls.check_keys(node)
        for f in fields:
            if f.name not in node and f.default is dataclasses.MISSING:
                node_name = cls.NODE or "top-level"
                raise VRSError(f"{cls.key_name(f.name)} is missing: the {node_name} node needs it (restore it, or pick "
                               f"a {cls.NODE or 'config'} option that sets it)")
        return cls(**{f.name: node[f.name] for f in fields if f.name in node})
