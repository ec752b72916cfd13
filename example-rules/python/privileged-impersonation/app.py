"""Component glue: implements the `rule-module` world with the logic in
`impersonation.py`.

`wit_world` only exists while componentize-py builds the component, which is
why the logic lives in a module of its own that the unit tests can import.
"""

import wit_world
from componentize_py_types import Err
from wit_world.imports import log, state, types

from impersonation import ConfigError, PrivilegedImpersonation

# The host gives each batch of events a fresh instance, and the module's
# configuration must survive from `configure` to the `evaluate` calls that
# follow, so it lives at module level rather than on the WitWorld object.
_MODULE = PrivilegedImpersonation(state)


def _priority(name):
    return None if name is None else types.Priority[name.upper()]


def _rule_info(rule):
    p = rule["prefilter"]
    return types.RuleInfo(
        id=rule["id"],
        name=rule["name"],
        description=rule["description"],
        priority=_priority(rule["priority"]),
        tags=list(rule["tags"]),
        prefilter=types.Prefilter(
            verbs=list(p["verbs"]),
            resources=list(p["resources"]),
            subresources=list(p["subresources"]),
            stages=list(p["stages"]),
        ),
        enabled=rule["enabled"],
    )


def _alert(alert):
    return types.Alert(
        rule_id=alert["rule_id"],
        priority=_priority(alert["priority"]),
        output=alert["output"],
        fields=list(alert["fields"]),
        tags=list(alert["tags"]),
    )


class WitWorld(wit_world.WitWorld):
    def metadata(self) -> types.ModuleInfo:
        info = _MODULE.metadata()
        return types.ModuleInfo(
            name=info["name"],
            version=info["version"],
            rules=[_rule_info(r) for r in info["rules"]],
            needs_request_object=info["needs_request_object"],
            needs_response_object=info["needs_response_object"],
        )

    def configure(self, config: str) -> None:
        try:
            _MODULE.configure(config)
        except ConfigError as e:
            raise Err(str(e))
        except Exception as e:
            # Any other exception would trap, and the operator would see a
            # trap instead of a reason.
            raise Err(f"configuration rejected: {e!r}")

    def evaluate(self, event: types.Event) -> list[types.Alert]:
        try:
            return [_alert(a) for a in _MODULE.evaluate(event)]
        except Exception as e:
            # An uncaught exception traps the instance, and the host would
            # report a rule error without saying which event or why.
            log.log(log.Level.ERROR, f"evaluate failed on audit event {event.audit_id}: {e!r}")
            raise
