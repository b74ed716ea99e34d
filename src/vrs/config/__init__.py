"""Typed configs: what the apps' own config nodes may hold, checked by Hydra and OmegaConf.

Each node the apps read is a dataclass (vrs.config.certify, .attack, .report, .paths), registered in Hydra's
ConfigStore in the group `schema` and named first in its yaml file's defaults list:

    # conf/certify/cohen.yaml                    # conf/attack.yaml
    defaults:                                    defaults:
      - /schema@_here_: certify                    - /schema@defense: defense
      - _self_

1. When Hydra composes, every value is converted to its field's type (`certify.n=1.5`, `certify.device=[1]`
   fail then, named by errors.describe_hydra_error) and a key the dataclass lacks is refused (`certify.nn=5`;
   with `+`, by Checked.check_keys).
2. `to_typed(cfg.certify)` (OmegaConf.to_object) builds the dataclass, whose __post_init__ checks each field's
   rule (its range, in words: `key(integer(1))`) and the rules between fields: errors.py's one line,
   `certify.alpha=1.5 is not allowed: a number strictly between 0 and 1`. vrs.config_schema does this before
   Hydra creates the run directory (vrs.apps.before_run.ValidateBeforeRun), and the app runs on the same object.
3. vrs.preflight then checks what needs files (checkpoints, data, output directories), once per run.

The nodes Hydra does not type are dataclasses of the same kind, built from the composed config by `Cls.of(node)`
(vrs.config_schema.check_values), with the same rules and error line: each app's top-level keys (config/apps.py),
data (data.py), train's model, module, optimizer, scheduler and trainer (train.py: the keys their targets do not
check; their other keys are the targets' parameters, config/tree.py), attack (its keys depend on the attack group),
source (importer.py) and dashboard (dashboard.py). A key such a node may leave out is `key(rule, absent_ok=True)`.

The values live only in the yaml files: a field has no default (a key missing from the yaml is an error).

Adding an option, e.g. certify.sampling (fixed | sequential | radius_target) and certify.sound (true | false):
  1. the value, with a comment saying what it does, in conf/certify/cohen.yaml (every certify option extends
     it; a VRS-only key goes into conf/certify/vrs_c1.yaml instead);
  2. a field in vrs/config/certify.py's CertifyConfig (or VRSCertifyConfig), in the yaml's order:
         sampling: str = key(one_of("fixed", "sequential", "radius_target"))
         sound: bool = key(BOOL)
         radii: Optional[List[float]] = key(optional(list_of(number(gt=0)), " (none)"))
     (the annotation is what Hydra enforces when it composes; the rule, from vrs.config.rules, the range in
     words; a rule between keys goes into __post_init__, after super().__post_init__(), as a
     `check(ok, "certify.<key>", value, "<what is allowed>")`);
  3. read it in the app as `opts.sampling`; add a bad value to tests/test_fuzz.py's table and the option to the
     README. tests/test_schemas.py::test_every_typed_node_is_its_yaml fails until yaml and dataclass agree.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from vrs.config.attack import DefenseConfig, PredictConfig
from vrs.config.certify import CertifyConfig, VRSCertifyConfig
from vrs.config.paths import PathsConfig
from vrs.config.report import ReportConfig
from vrs.config.rules import Checked

SCHEMAS = {"certify": CertifyConfig, "certify_vrs": VRSCertifyConfig, "defense": DefenseConfig,
           "predict": PredictConfig, "report": ReportConfig, "paths": PathsConfig}


def register_configs() -> None:
    """Put the typed configs into Hydra's ConfigStore (group `schema`), where conf/'s defaults lists find them."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for name, node in SCHEMAS.items():
        store.store(group="schema", name=name, node=node)


def is_typed(node: Any) -> bool:
    return isinstance(node, DictConfig) and isinstance(OmegaConf.get_type(node), type) and issubclass(
        OmegaConf.get_type(node), Checked)


def to_typed(node: DictConfig, schema: type[Checked] | None = None) -> Checked:
    """The node as its dataclass, every rule checked (a ConfigError naming the first bad key). A node that lost its
    type (a config sent to a worker process as a plain dict) is typed by `schema` first, with the same checks."""
    if not is_typed(node):
        if schema is None:
            raise TypeError(f"to_typed: an untyped node ({type(node).__name__}) needs its schema")
        node = OmegaConf.merge(OmegaConf.structured(schema), node)
    cls = OmegaConf.get_type(node)
    cls.check_keys(node)
    return OmegaConf.to_object(node)
