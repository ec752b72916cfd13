"""Detection logic of the privileged-impersonation module, in plain Python.

Nothing here imports the generated WIT bindings, so the rules run under
`python3 -m unittest` as they do inside the component. `app.py` adapts this
module to the component's exports.

Impersonation (`kubectl --as` / `--as-group`, the `Impersonate-*` headers)
swaps the requester's identity for another one, and RBAC then judges the
request as that identity. Whoever holds the `impersonate` verb on a powerful
identity holds that identity's power: impersonating `system:masters` bypasses
RBAC entirely, and the kube-system controllers' service accounts can mint
tokens, read every secret or escalate roles. Admins do use it as a `sudo`, so
known impersonators are allow-listed; anyone else doing it is an incident.

Two rules:

- `privileged-impersonation`: the apiserver accepted the impersonation (the
  event carries `impersonatedUser`) and the impersonated identity is
  privileged.
- `privileged-impersonation-denied`: the apiserver refused to let the
  requester impersonate a privileged identity. Such an event has no
  `impersonatedUser`; what was asked for is only in the 403's message, for
  example `groups "system:masters" is forbidden: User "mallory" cannot
  impersonate resource "groups" in API group "" at the cluster scope`.
"""

import json
import re

MODULE_NAME = "privileged-impersonation"
MODULE_VERSION = "1.0.0"

RULE_ACCEPTED = "privileged-impersonation"
RULE_DENIED = "privileged-impersonation-denied"

# A long-running request (watch, exec, port-forward) is audited at
# ResponseStarted and again at ResponseComplete, possibly hours later; a
# request raises its alert once, at the first of its stages we see. The key
# lives for this long in event time.
SAME_REQUEST_TTL_SECONDS = 6 * 3600

# Impersonation is checked before the request reaches any handler, so any
# verb on any resource can carry it: no verb or resource prefilter. Audit
# policies commonly omit RequestReceived, and a request that has one also has
# a later stage, so it is not needed.
STAGES = ["ResponseStarted", "ResponseComplete", "Panic"]

TAGS = ["k8s", "impersonation", "privilege-escalation", "T1078"]

DEFAULT_CONFIG = {
    # Users whose impersonation is expected: break-glass tooling, access
    # proxies (Rancher, kube-oidc-proxy, Pinniped concierge, Teleport...).
    "allowed_impersonators": [],
    # Groups whose members may impersonate, e.g. an on-call admin group.
    "allowed_impersonator_groups": [],
    # system:apiserver is the apiserver's own loopback identity and
    # system:kube-controller-manager can mint any service account's token.
    "privileged_users": [
        "system:admin",
        "system:apiserver",
        "system:kube-controller-manager",
    ],
    # system:masters bypasses RBAC. system:nodes (with a system:node:<name>
    # username) gets the node authorizer's access to the secrets of the
    # node's pods and can rewrite its node's status.
    "privileged_groups": ["system:masters", "system:nodes"],
    # Service accounts in these namespaces run the control plane.
    "privileged_service_account_namespaces": ["kube-system"],
}

_SA_PREFIX = "system:serviceaccount:"
_SA_GROUP_PREFIX = "system:serviceaccounts:"

# forbiddenMessage() of k8s.io/apiserver wrapped in a Forbidden status; the
# quoted name is Go's %q, so it may contain escaped quotes.
_DENIED_MESSAGE = re.compile(
    r'^(?P<resource>users|groups|serviceaccounts|uids|userextras[^ ]*) '
    r'"(?P<name>(?:[^"\\]|\\.)*)" is forbidden: User "(?:[^"\\]|\\.)*" '
    r'cannot impersonate resource "[^"]*" in API group "[^"]*" '
    r'(?:at the cluster scope|in the namespace "(?P<namespace>(?:[^"\\]|\\.)*)")'
)


class ConfigError(ValueError):
    """A configuration the operator must fix; the message says what."""


def parse_config(text):
    """Validates the module configuration (JSON text) and returns a dict with
    every key of DEFAULT_CONFIG. Given keys replace the defaults."""
    text = (text or "").strip()
    if text in ("", "null"):
        given = {}
    else:
        try:
            given = json.loads(text)
        except ValueError as e:
            raise ConfigError(f"configuration is not valid JSON: {e}") from None
        if given is None:
            given = {}
    if not isinstance(given, dict):
        raise ConfigError("configuration must be a JSON object")
    config = {k: list(v) for k, v in DEFAULT_CONFIG.items()}
    for key, value in given.items():
        if key not in DEFAULT_CONFIG:
            known = ", ".join(sorted(DEFAULT_CONFIG))
            raise ConfigError(f"unknown configuration key {key!r} (known keys: {known})")
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key} must be a list of strings")
        config[key] = list(value)
    return config


def falco_list(items):
    """Renders a list as Falco renders list-valued fields: `(a,b)`."""
    return "(" + ",".join(items) + ")"


def na(value):
    """Falco prints a missing field as `<NA>`."""
    return "<NA>" if value is None else str(value)


def _unquote(go_quoted):
    return re.sub(r"\\(.)", r"\1", go_quoted)


class PrivilegedImpersonation:
    """The module. `state` provides `first_seen(key, ttl_seconds, now_unix_nanos)`
    (the host's `state` interface, or a stand-in in tests)."""

    def __init__(self, state):
        self.state = state
        self.config = parse_config("{}")

    def configure(self, text):
        self.config = parse_config(text)

    def metadata(self):
        prefilter = {"verbs": [], "resources": [], "subresources": [], "stages": STAGES}
        return {
            "name": MODULE_NAME,
            "version": MODULE_VERSION,
            "rules": [
                {
                    "id": RULE_ACCEPTED,
                    "name": "Privileged Identity Impersonated",
                    "description": "A user outside the allow-list made a request as system:masters, "
                    "a control-plane user or a kube-system service account",
                    "priority": "critical",
                    "tags": TAGS,
                    "prefilter": prefilter,
                    "enabled": True,
                },
                {
                    "id": RULE_DENIED,
                    "name": "Privileged Impersonation Denied",
                    "description": "A user outside the allow-list tried to impersonate a privileged "
                    "identity and was refused",
                    "priority": "warning",
                    "tags": TAGS + ["failed-attempt"],
                    "prefilter": prefilter,
                    "enabled": True,
                },
            ],
            "needs_request_object": False,
            "needs_response_object": False,
        }

    # --- what counts as privileged -------------------------------------

    def _privileged_service_account_namespace(self, namespace):
        return namespace in self.config["privileged_service_account_namespaces"]

    def privileged_reasons(self, username, groups):
        """Why the identity (username, groups) is privileged; empty if it is not."""
        reasons = []
        if username in self.config["privileged_users"]:
            reasons.append(f"user {username}")
        for group in groups:
            if group in self.config["privileged_groups"]:
                reasons.append(f"group {group}")
        if username.startswith(_SA_PREFIX):
            namespace = username[len(_SA_PREFIX):].split(":", 1)[0]
            if self._privileged_service_account_namespace(namespace):
                reasons.append(f"service account in {namespace}")
        else:
            # An explicit --as-group system:serviceaccounts:kube-system grants
            # whatever is bound to every service account of the namespace.
            for group in groups:
                if group.startswith(_SA_GROUP_PREFIX) and self._privileged_service_account_namespace(
                    group[len(_SA_GROUP_PREFIX):]
                ):
                    reasons.append(f"group {group}")
        return reasons

    def _allowed(self, user):
        if user.username in self.config["allowed_impersonators"]:
            return True
        allowed_groups = self.config["allowed_impersonator_groups"]
        return any(g in allowed_groups for g in user.groups)

    # --- evaluation -----------------------------------------------------

    def evaluate(self, event):
        # The prefilter cannot select impersonated or refused requests, so
        # every audited request arrives here: leave the common case first.
        if event.impersonated_user is None:
            status = event.response_status
            if status is None or status.code != 403:
                return []
        if self._allowed(event.user):
            return []
        if event.impersonated_user is not None:
            return self._accepted(event)
        return self._denied(event)

    def _first_time(self, event):
        if not event.audit_id:
            return True
        return self.state.first_seen(
            f"request:{event.audit_id}", SAME_REQUEST_TTL_SECONDS, event.time_unix_nanos
        )

    def _common_fields(self, event):
        ref = event.object_ref
        status = event.response_status
        return [
            ("ka.user.name", event.user.username),
            ("ka.user.groups", falco_list(event.user.groups)),
            ("ka.verb", event.verb),
            ("ka.uri", event.request_uri),
            ("ka.target.resource", ref.resource if ref else None),
            ("ka.target.subresource", ref.subresource if ref else None),
            ("ka.target.namespace", ref.namespace if ref else None),
            ("ka.target.name", ref.name if ref else None),
            ("ka.response.code", str(status.code) if status and status.code is not None else None),
            ("ka.sourceips", falco_list(event.source_ips)),
            ("ka.useragent", event.user_agent),
        ]

    def _accepted(self, event):
        imp = event.impersonated_user
        reasons = self.privileged_reasons(imp.username, imp.groups)
        if not reasons or not self._first_time(event):
            return []
        ref = event.object_ref
        status = event.response_status
        output = (
            f"Privileged identity impersonated (user={event.user.username} "
            f"impersonated={imp.username} impersonated_groups={falco_list(imp.groups)} "
            f"privileged_because={'; '.join(reasons)} verb={event.verb} uri={event.request_uri} "
            f"resource={na(ref.resource if ref else None)} ns={na(ref.namespace if ref else None)} "
            f"code={na(status.code if status else None)})"
        )
        fields = self._common_fields(event) + [
            ("ka.impuser.name", imp.username),
            ("impuser.groups", falco_list(imp.groups)),
            ("impersonation.privileged_because", "; ".join(reasons)),
        ]
        return [{"rule_id": RULE_ACCEPTED, "priority": None, "output": output, "fields": fields, "tags": []}]

    def _denied(self, event):
        status = event.response_status
        if status is None or status.code != 403 or not status.message:
            return []
        match = _DENIED_MESSAGE.match(status.message)
        if match is None:
            return []
        resource = match.group("resource")
        name = _unquote(match.group("name"))
        if resource == "users":
            reasons = self.privileged_reasons(name, [])
        elif resource == "groups":
            reasons = self.privileged_reasons("", [name])
        elif resource == "serviceaccounts":
            namespace = _unquote(match.group("namespace") or "")
            reasons = self.privileged_reasons(f"{_SA_PREFIX}{namespace}:{name}", [])
            name = f"{_SA_PREFIX}{namespace}:{name}"
        else:
            # uids and extras say nothing about privilege on their own.
            reasons = []
        if not reasons or not self._first_time(event):
            return []
        requested = f"{resource}/{name}"
        output = (
            f"Impersonation of a privileged identity denied (user={event.user.username} "
            f"requested={requested} privileged_because={'; '.join(reasons)} verb={event.verb} "
            f"uri={event.request_uri})"
        )
        fields = self._common_fields(event) + [
            ("ka.response.reason", status.reason),
            ("impersonation.requested", requested),
            ("impersonation.privileged_because", "; ".join(reasons)),
        ]
        return [{"rule_id": RULE_DENIED, "priority": None, "output": output, "fields": fields, "tags": []}]
