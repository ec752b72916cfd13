// Stand-ins for what the host gives a JavaScript rule module, for unit tests
// under `node --test`: the `state` interface with the host's semantics, a
// `log` that records, and the conversion of an audit.k8s.io Event (as the
// apiserver writes it) into the `event` record as the component receives it.

const NANOS = 1_000_000_000n;

function floorDiv(a, b) {
  const q = a / b;
  return a % b !== 0n && (a < 0n) !== (b < 0n) ? q - 1n : q;
}

// The state interface as the host implements it: windows in event time,
// per-second resolution, s64 times and u64 results as BigInt.
export function createHostState() {
  const counters = new Map();
  const sets = new Map();
  const seen = new Map();
  return {
    counterAdd(key, delta, windowSeconds, nowUnixNanos) {
      const window = BigInt(Math.max(windowSeconds, 1));
      const sec = floorDiv(BigInt(nowUnixNanos), NANOS);
      const buckets = counters.get(key) ?? new Map();
      buckets.set(sec, (buckets.get(sec) ?? 0n) + BigInt(delta));
      const newest = [...buckets.keys()].reduce((a, b) => (b > a ? b : a));
      for (const s of buckets.keys()) if (s <= newest - window) buckets.delete(s);
      counters.set(key, buckets);
      let total = 0n;
      for (const [s, c] of buckets) if (s > sec - window && s <= sec) total += c;
      return total;
    },
    distinctAdd(key, member, windowSeconds, nowUnixNanos) {
      const window = BigInt(Math.max(windowSeconds, 1));
      const sec = floorDiv(BigInt(nowUnixNanos), NANOS);
      const members = sets.get(key) ?? new Map();
      for (const [m, last] of members) if (last <= sec - window) members.delete(m);
      const last = members.get(member);
      members.set(member, last !== undefined && last > sec ? last : sec);
      sets.set(key, members);
      return BigInt(members.size);
    },
    firstSeen(key, ttlSeconds, nowUnixNanos) {
      const now = BigInt(nowUnixNanos);
      const ttl = BigInt(Math.max(ttlSeconds, 1)) * NANOS;
      const last = seen.get(key);
      if (last === undefined) {
        seen.set(key, now);
        return true;
      }
      seen.set(key, now > last ? now : last);
      return now - last >= ttl;
    },
  };
}

// A `log` that keeps its lines, to assert on them.
export function createLog() {
  const lines = [];
  const log = (level, message) => {
    lines.push({ level, message });
  };
  log.lines = lines;
  return log;
}

// RFC 3339 with up to nanoseconds, as the apiserver writes it, to Unix nanoseconds.
export function unixNanos(timestamp) {
  if (!timestamp) return 0n;
  const m = /^(.*?)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$/.exec(timestamp);
  if (!m) throw new Error(`not an RFC 3339 timestamp: ${timestamp}`);
  const seconds = BigInt(Date.parse(`${m[1]}${m[3]}`)) / 1000n;
  return seconds * NANOS + BigInt(`${m[2] ?? ''}000000000`.slice(0, 9));
}

function userInfo(u) {
  if (u == null) return undefined;
  return {
    username: u.username ?? '',
    uid: u.uid,
    groups: [...(u.groups ?? [])],
    extra: Object.entries(u.extra ?? {}).map(([k, v]) => [k, [...v]]),
  };
}

// The `event` record for an audit event object, shaped as componentize-js
// passes it: camelCase fields, `undefined` for absent options, tuples as
// two-element arrays, `time-unix-nanos` as a BigInt, raw objects as JSON text.
export function eventFromAudit(audit, { tenant = 'default', requestObject = false, responseObject = false } = {}) {
  const ref = audit.objectRef;
  const status = audit.responseStatus;
  return {
    tenant,
    auditId: audit.auditID ?? '',
    stage: audit.stage ?? '',
    level: audit.level ?? '',
    verb: audit.verb ?? '',
    requestUri: audit.requestURI ?? '',
    user: userInfo(audit.user ?? {}),
    impersonatedUser: userInfo(audit.impersonatedUser),
    sourceIps: [...(audit.sourceIPs ?? [])],
    userAgent: audit.userAgent,
    objectRef: ref && {
      resource: ref.resource,
      subresource: ref.subresource,
      namespace: ref.namespace,
      name: ref.name,
      uid: ref.uid,
      apiGroup: ref.apiGroup,
      apiVersion: ref.apiVersion,
      resourceVersion: ref.resourceVersion,
    },
    responseStatus: status && {
      code: status.code,
      status: status.status,
      reason: status.reason,
      message: status.message,
    },
    requestReceivedTimestamp: audit.requestReceivedTimestamp,
    stageTimestamp: audit.stageTimestamp,
    timeUnixNanos: unixNanos(audit.stageTimestamp ?? audit.requestReceivedTimestamp ?? audit.timestamp),
    annotations: Object.entries(audit.annotations ?? {}),
    requestObject: requestObject && audit.requestObject !== undefined ? JSON.stringify(audit.requestObject) : undefined,
    responseObject: responseObject && audit.responseObject !== undefined ? JSON.stringify(audit.responseObject) : undefined,
  };
}

function admits(list, value) {
  return list.length === 0 || (value !== undefined && list.includes(value));
}

// Drives a module as the host does: configure, metadata, then evaluate only
// the events an enabled rule's prefilter admits, with raw objects only if
// asked for, and checks that every alert names a declared rule.
export function harness(module, config = '{}') {
  module.configure(config);
  const info = module.metadata();
  return {
    info,
    evaluate(audit) {
      const event = eventFromAudit(audit, {
        requestObject: info.needsRequestObject,
        responseObject: info.needsResponseObject,
      });
      const admitted = info.rules.some(
        (r) =>
          r.enabled &&
          admits(r.prefilter.verbs, event.verb) &&
          admits(r.prefilter.resources, event.objectRef?.resource) &&
          admits(r.prefilter.subresources, event.objectRef?.subresource) &&
          admits(r.prefilter.stages, event.stage),
      );
      if (!admitted) return [];
      const alerts = module.evaluate(event);
      for (const a of alerts) {
        if (!info.rules.some((r) => r.id === a.ruleId)) throw new Error(`alert names undeclared rule ${a.ruleId}`);
        for (const [k, v] of a.fields) {
          if (typeof k !== 'string' || (v !== undefined && typeof v !== 'string')) {
            throw new Error(`field ${k} must be a string or undefined, not ${typeof v}`);
          }
        }
      }
      return alerts;
    },
  };
}
