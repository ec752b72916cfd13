"""Unit tests of the detection logic, run with `python3 -m unittest` in this
directory. Events are written as the apiserver writes them (audit.k8s.io/v1
JSON) and converted to the shape of the WIT `event` record, as the host does.
"""

import datetime
import json
import unittest
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from impersonation import (
    RULE_ACCEPTED,
    RULE_DENIED,
    ConfigError,
    PrivilegedImpersonation,
    parse_config,
)

# Attribute names and types of the generated `wit_world.imports.types`
# records, so the logic sees in tests what it sees in the component.


@dataclass
class UserInfo:
    username: str
    uid: Optional[str] = None
    groups: List[str] = field(default_factory=list)
    extra: List[Tuple[str, List[str]]] = field(default_factory=list)


@dataclass
class ObjectRef:
    resource: Optional[str] = None
    subresource: Optional[str] = None
    namespace: Optional[str] = None
    name: Optional[str] = None
    uid: Optional[str] = None
    api_group: Optional[str] = None
    api_version: Optional[str] = None
    resource_version: Optional[str] = None


@dataclass
class ResponseStatus:
    code: Optional[int] = None
    status: Optional[str] = None
    reason: Optional[str] = None
    message: Optional[str] = None


@dataclass
class Event:
    tenant: str
    audit_id: str
    stage: str
    level: str
    verb: str
    request_uri: str
    user: UserInfo
    impersonated_user: Optional[UserInfo]
    source_ips: List[str]
    user_agent: Optional[str]
    object_ref: Optional[ObjectRef]
    response_status: Optional[ResponseStatus]
    request_received_timestamp: Optional[str]
    stage_timestamp: Optional[str]
    time_unix_nanos: int
    annotations: List[Tuple[str, str]]
    request_object: Optional[str]
    response_object: Optional[str]


def _nanos(timestamp):
    if not timestamp:
        return 0
    # fromisoformat takes at most microseconds; the apiserver writes up to nanoseconds.
    head, _, frac = timestamp.rstrip("Z").partition(".")
    frac = (frac + "000000000")[:9]
    base = datetime.datetime.fromisoformat(head).replace(tzinfo=datetime.timezone.utc)
    return int(base.timestamp()) * 1_000_000_000 + int(frac)


def _user(u):
    if u is None:
        return None
    return UserInfo(
        username=u.get("username", ""),
        uid=u.get("uid"),
        groups=list(u.get("groups", [])),
        extra=[(k, list(v)) for k, v in u.get("extra", {}).items()],
    )


def event_from_audit(audit, tenant="default"):
    """The WIT record for an audit.k8s.io Event given as a dict."""
    ref = audit.get("objectRef")
    status = audit.get("responseStatus")
    time_text = audit.get("stageTimestamp") or audit.get("requestReceivedTimestamp") or audit.get("timestamp")
    return Event(
        tenant=tenant,
        audit_id=audit.get("auditID", ""),
        stage=audit.get("stage", ""),
        level=audit.get("level", ""),
        verb=audit.get("verb", ""),
        request_uri=audit.get("requestURI", ""),
        user=_user(audit.get("user", {})),
        impersonated_user=_user(audit.get("impersonatedUser")),
        source_ips=list(audit.get("sourceIPs", [])),
        user_agent=audit.get("userAgent"),
        object_ref=None
        if ref is None
        else ObjectRef(
            resource=ref.get("resource"),
            subresource=ref.get("subresource"),
            namespace=ref.get("namespace"),
            name=ref.get("name"),
            uid=ref.get("uid"),
            api_group=ref.get("apiGroup"),
            api_version=ref.get("apiVersion"),
            resource_version=ref.get("resourceVersion"),
        ),
        response_status=None
        if status is None
        else ResponseStatus(
            code=status.get("code"),
            status=status.get("status"),
            reason=status.get("reason"),
            message=status.get("message"),
        ),
        request_received_timestamp=audit.get("requestReceivedTimestamp"),
        stage_timestamp=audit.get("stageTimestamp"),
        time_unix_nanos=_nanos(time_text),
        annotations=list(audit.get("annotations", {}).items()),
        request_object=None,
        response_object=None,
    )


class FirstSeenState:
    """The host's first-seen semantics: true if the key was not seen in the
    ttl before now; marks it seen now either way."""

    def __init__(self):
        self.seen = {}

    def first_seen(self, key, ttl_seconds, now_unix_nanos):
        last = self.seen.get(key)
        self.seen[key] = now_unix_nanos if last is None else max(last, now_unix_nanos)
        return last is None or now_unix_nanos - last >= ttl_seconds * 1_000_000_000


def audit_event(**overrides):
    event = {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "Metadata",
        "auditID": "6f3c1a52-4a9e-4d35-9c1c-2f0f4bbd3a10",
        "stage": "ResponseComplete",
        "requestURI": "/api/v1/namespaces/kube-system/secrets",
        "verb": "list",
        "user": {"username": "mallory@example.com", "groups": ["developers", "system:authenticated"]},
        "sourceIPs": ["203.0.113.7"],
        "userAgent": "kubectl/v1.31.0 (linux/amd64) kubernetes/9d6b5b4",
        "objectRef": {"resource": "secrets", "namespace": "kube-system", "apiVersion": "v1"},
        "responseStatus": {"metadata": {}, "code": 200},
        "requestReceivedTimestamp": "2025-03-04T10:15:30.120412Z",
        "stageTimestamp": "2025-03-04T10:15:30.131877Z",
        "annotations": {"authorization.k8s.io/decision": "allow", "authorization.k8s.io/reason": ""},
    }
    event.update(overrides)
    return event


def forbidden(message):
    return {
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": "Forbidden",
        "details": {"name": "x", "kind": "x"},
        "code": 403,
    }


def fields(alert):
    return dict(alert["fields"])


class Module:
    def __init__(self, config="{}"):
        self.state = FirstSeenState()
        self.module = PrivilegedImpersonation(self.state)
        self.module.configure(config)
        self.info = self.module.metadata()

    def evaluate(self, audit):
        """Evaluates as the host does: only events an enabled rule's
        prefilter admits, and every alert must name a declared rule."""
        event = event_from_audit(audit)
        admitted = any(
            r["enabled"] and (not r["prefilter"]["stages"] or event.stage in r["prefilter"]["stages"])
            for r in self.info["rules"]
        )
        if not admitted:
            return []
        alerts = self.module.evaluate(event)
        declared = {r["id"] for r in self.info["rules"]}
        for a in alerts:
            assert a["rule_id"] in declared, a["rule_id"]
            assert all(isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in a["fields"])
        return alerts


class AcceptedImpersonation(unittest.TestCase):
    def test_system_masters_group_is_detected(self):
        m = Module()
        alerts = m.evaluate(
            audit_event(impersonatedUser={"username": "ops-robot", "groups": ["system:masters", "system:authenticated"]})
        )
        self.assertEqual([a["rule_id"] for a in alerts], [RULE_ACCEPTED])
        f = fields(alerts[0])
        self.assertEqual(f["ka.user.name"], "mallory@example.com")
        self.assertEqual(f["ka.impuser.name"], "ops-robot")
        self.assertEqual(f["impersonation.privileged_because"], "group system:masters")
        self.assertEqual(f["ka.target.resource"], "secrets")
        self.assertEqual(f["ka.target.namespace"], "kube-system")
        self.assertIsNone(f["ka.target.name"])
        self.assertEqual(f["ka.response.code"], "200")
        self.assertEqual(f["ka.sourceips"], "(203.0.113.7)")
        self.assertIn("impersonated=ops-robot", alerts[0]["output"])

    def test_system_admin_user_is_detected(self):
        alerts = Module().evaluate(
            audit_event(impersonatedUser={"username": "system:admin", "groups": ["system:authenticated"]})
        )
        self.assertEqual(fields(alerts[0])["impersonation.privileged_because"], "user system:admin")

    def test_kube_system_service_account_is_detected(self):
        # The apiserver adds the service-account groups itself when none are given.
        imp = {
            "username": "system:serviceaccount:kube-system:clusterrole-aggregation-controller",
            "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"],
        }
        alerts = Module().evaluate(audit_event(impersonatedUser=imp, verb="escalate"))
        self.assertEqual(len(alerts), 1)
        self.assertEqual(
            fields(alerts[0])["impersonation.privileged_because"], "service account in kube-system"
        )

    def test_kube_system_service_account_group_alone_is_detected(self):
        imp = {"username": "nobody", "groups": ["system:serviceaccounts:kube-system"]}
        alerts = Module().evaluate(audit_event(impersonatedUser=imp))
        self.assertEqual(
            fields(alerts[0])["impersonation.privileged_because"], "group system:serviceaccounts:kube-system"
        )

    def test_node_identity_is_detected(self):
        imp = {"username": "system:node:worker-3", "groups": ["system:nodes", "system:authenticated"]}
        alerts = Module().evaluate(audit_event(impersonatedUser=imp, verb="get", requestURI="/api/v1/namespaces/prod/secrets/db"))
        self.assertEqual(fields(alerts[0])["impersonation.privileged_because"], "group system:nodes")

    def test_unprivileged_impersonation_is_quiet(self):
        # From the audit2rbac demo log: an admin checks what bob may do.
        line = {
            "kind": "Event",
            "apiVersion": "audit.k8s.io/v1",
            "level": "Metadata",
            "timestamp": "2017-09-11T19:55:05Z",
            "auditID": "033d17af-082d-4b24-aa22-627752e83d71",
            "stage": "ResponseComplete",
            "requestURI": "/api/v1/namespaces/default/pods",
            "verb": "list",
            "user": {"username": "system:admin", "groups": ["system:masters", "system:authenticated"]},
            "impersonatedUser": {"username": "bob", "groups": ["system:authenticated"]},
            "sourceIPs": ["::1"],
            "objectRef": {"resource": "pods", "namespace": "default", "apiVersion": "v1"},
            "responseStatus": forbidden('pods is forbidden: User "bob" cannot list pods in the namespace "default"'),
        }
        self.assertEqual(Module().evaluate(line), [])
        sa_elsewhere = {
            "username": "system:serviceaccount:team-a:builder",
            "groups": ["system:serviceaccounts", "system:serviceaccounts:team-a", "system:authenticated"],
        }
        self.assertEqual(Module().evaluate(audit_event(impersonatedUser=sa_elsewhere)), [])

    def test_no_impersonation_is_quiet(self):
        self.assertEqual(Module().evaluate(audit_event()), [])
        admin = audit_event(user={"username": "system:admin", "groups": ["system:masters"]})
        self.assertEqual(Module().evaluate(admin), [])

    def test_long_running_request_alerts_once(self):
        m = Module()
        imp = {"username": "system:admin", "groups": ["system:masters"]}
        started = audit_event(
            stage="ResponseStarted",
            verb="create",
            requestURI="/api/v1/namespaces/prod/pods/web-0/exec?command=sh&stdin=true&tty=true",
            objectRef={"resource": "pods", "subresource": "exec", "namespace": "prod", "name": "web-0"},
            responseStatus={"code": 101},
            impersonatedUser=imp,
            stageTimestamp="2025-03-04T10:15:31.000000Z",
        )
        complete = dict(started, stage="ResponseComplete", stageTimestamp="2025-03-04T10:45:02.000000Z")
        self.assertEqual(len(m.evaluate(started)), 1)
        self.assertEqual(m.evaluate(complete), [])
        other = dict(complete, auditID="0a5b2c8e-65d4-4b8e-8d0c-9b0d2b6f7e11")
        self.assertEqual(len(m.evaluate(other)), 1)

    def test_request_received_stage_is_not_evaluated(self):
        imp = {"username": "system:admin", "groups": ["system:masters"]}
        self.assertEqual(Module().evaluate(audit_event(stage="RequestReceived", impersonatedUser=imp)), [])

    def test_allow_listed_impersonators_are_quiet(self):
        imp = {"username": "system:admin", "groups": ["system:masters"]}
        by_name = Module('{"allowed_impersonators": ["mallory@example.com"]}')
        self.assertEqual(by_name.evaluate(audit_event(impersonatedUser=imp)), [])
        by_group = Module('{"allowed_impersonator_groups": ["developers"]}')
        self.assertEqual(by_group.evaluate(audit_event(impersonatedUser=imp)), [])
        other_group = Module('{"allowed_impersonator_groups": ["sre"]}')
        self.assertEqual(len(other_group.evaluate(audit_event(impersonatedUser=imp))), 1)

    def test_configured_privileged_identities_replace_the_defaults(self):
        m = Module('{"privileged_users": ["break-glass"], "privileged_groups": [], '
                   '"privileged_service_account_namespaces": ["platform"]}')
        self.assertEqual(len(m.evaluate(audit_event(impersonatedUser={"username": "break-glass"}))), 1)
        masters = audit_event(auditID="b", impersonatedUser={"username": "x", "groups": ["system:masters"]})
        self.assertEqual(m.evaluate(masters), [])
        sa = audit_event(auditID="c", impersonatedUser={"username": "system:serviceaccount:platform:deployer"})
        self.assertEqual(len(m.evaluate(sa)), 1)


class DeniedImpersonation(unittest.TestCase):
    def test_denied_system_masters_group(self):
        e = audit_event(
            verb="get",
            requestURI="/api/v1/nodes",
            objectRef={"resource": "nodes", "apiVersion": "v1"},
            responseStatus=forbidden(
                'groups "system:masters" is forbidden: User "mallory@example.com" cannot impersonate '
                'resource "groups" in API group "" at the cluster scope'
            ),
            annotations={"authorization.k8s.io/decision": "forbid", "authorization.k8s.io/reason": ""},
        )
        alerts = Module().evaluate(e)
        self.assertEqual([a["rule_id"] for a in alerts], [RULE_DENIED])
        f = fields(alerts[0])
        self.assertEqual(f["impersonation.requested"], "groups/system:masters")
        self.assertEqual(f["ka.response.code"], "403")
        self.assertEqual(f["ka.response.reason"], "Forbidden")

    def test_denied_kube_system_service_account(self):
        e = audit_event(
            responseStatus=forbidden(
                'serviceaccounts "generic-garbage-collector" is forbidden: User "mallory@example.com" cannot '
                'impersonate resource "serviceaccounts" in API group "" in the namespace "kube-system"'
            )
        )
        alerts = Module().evaluate(e)
        self.assertEqual(
            fields(alerts[0])["impersonation.requested"],
            "serviceaccounts/system:serviceaccount:kube-system:generic-garbage-collector",
        )

    def test_denied_system_admin_with_rbac_reason_suffix(self):
        e = audit_event(
            responseStatus=forbidden(
                'users "system:admin" is forbidden: User "mallory@example.com" cannot impersonate resource '
                '"users" in API group "" at the cluster scope: no RBAC policy matched'
            )
        )
        self.assertEqual(fields(Module().evaluate(e)[0])["impersonation.requested"], "users/system:admin")

    def test_other_denials_are_quiet(self):
        quiet = [
            'users "bob" is forbidden: User "mallory@example.com" cannot impersonate resource "users" '
            'in API group "" at the cluster scope',
            'serviceaccounts "builder" is forbidden: User "mallory@example.com" cannot impersonate '
            'resource "serviceaccounts" in API group "" in the namespace "team-a"',
            'secrets is forbidden: User "mallory@example.com" cannot list resource "secrets" in API group "" '
            'in the namespace "kube-system"',
            # Refused to read a user object, not to act as it.
            'users "system:admin" is forbidden: User "mallory@example.com" cannot get resource "users" '
            'in API group "" at the cluster scope',
        ]
        for message in quiet:
            with self.subTest(message=message):
                self.assertEqual(Module().evaluate(audit_event(responseStatus=forbidden(message))), [])

    def test_allow_listed_impersonator_denied_is_quiet(self):
        e = audit_event(
            responseStatus=forbidden(
                'groups "system:masters" is forbidden: User "mallory@example.com" cannot impersonate '
                'resource "groups" in API group "" at the cluster scope'
            )
        )
        self.assertEqual(Module('{"allowed_impersonators": ["mallory@example.com"]}').evaluate(e), [])


class Configuration(unittest.TestCase):
    def test_empty_configurations_give_the_defaults(self):
        for text in ["{}", "", "null", "  {}  "]:
            with self.subTest(text=text):
                self.assertIn("system:masters", parse_config(text)["privileged_groups"])

    def test_bad_configurations_are_rejected_with_the_reason(self):
        cases = {
            "[1]": "must be a JSON object",
            "{": "not valid JSON",
            '{"allowed_impersonator": []}': "unknown configuration key 'allowed_impersonator'",
            '{"allowed_impersonators": "alice"}': "allowed_impersonators must be a list of strings",
            '{"privileged_groups": [1]}': "privileged_groups must be a list of strings",
        }
        for text, reason in cases.items():
            with self.subTest(text=text):
                with self.assertRaises(ConfigError) as ctx:
                    parse_config(text)
                self.assertIn(reason, str(ctx.exception))

    def test_metadata_declares_both_rules_and_no_raw_objects(self):
        info = Module().info
        self.assertEqual([r["id"] for r in info["rules"]], [RULE_ACCEPTED, RULE_DENIED])
        self.assertFalse(info["needs_request_object"])
        self.assertFalse(info["needs_response_object"])
        for r in info["rules"]:
            self.assertIn("T1078", r["tags"])
            self.assertNotIn("RequestReceived", r["prefilter"]["stages"])
        json.dumps(info)


if __name__ == "__main__":
    unittest.main()
