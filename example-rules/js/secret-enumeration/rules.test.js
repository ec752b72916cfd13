// Unit tests of the detection logic: `node --test` in example-rules/js.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { createHostState, createLog, harness } from '../testing/host.js';
import { ConfigError, RULE_CLUSTER_WIDE, RULE_ENUMERATION, createModule, parseConfig } from './rules.js';

const ALICE = { username: 'alice@example.com', groups: ['developers', 'system:authenticated'] };

// A secret read as the apiserver audits it at Metadata level, `second`
// seconds after 10:00:00. `namespace: null` reads across all namespaces.
function read({ verb = 'get', namespace = 'prod', name, user = ALICE, second = 0, code = 200, stage = 'ResponseComplete', id }) {
  const path = namespace === null ? '/api/v1/secrets' : `/api/v1/namespaces/${namespace}/secrets${name ? `/${name}` : ''}`;
  const minutes = String(Math.floor(second / 60)).padStart(2, '0');
  const seconds = String(second % 60).padStart(2, '0');
  const time = `2025-03-04T10:${minutes}:${seconds}.482113Z`;
  return {
    kind: 'Event',
    apiVersion: 'audit.k8s.io/v1',
    level: 'Metadata',
    auditID: id ?? `${user.username}-${verb}-${namespace}-${name}-${second}-${stage}`,
    stage,
    requestURI: verb === 'watch' ? `${path}?watch=true` : path,
    verb,
    user,
    sourceIPs: ['198.51.100.23'],
    userAgent: 'kubectl/v1.31.0 (linux/amd64) kubernetes/9d6b5b4',
    objectRef: {
      resource: 'secrets',
      apiVersion: 'v1',
      ...(namespace === null ? {} : { namespace }),
      ...(name === undefined ? {} : { name }),
    },
    responseStatus: code === undefined ? undefined : { metadata: {}, code },
    requestReceivedTimestamp: time,
    stageTimestamp: time,
    annotations: { 'authorization.k8s.io/decision': code === 403 ? 'forbid' : 'allow', 'authorization.k8s.io/reason': '' },
  };
}

function setup(config = '{}') {
  const state = createHostState();
  const log = createLog();
  const h = harness(createModule({ ...state, log }), config);
  return { ...h, log };
}

const fieldMap = (alert) => Object.fromEntries(alert.fields);

describe('secret-enumeration', () => {
  it('alerts once when a user reads `threshold` distinct secrets within the window', () => {
    const m = setup('{"threshold": 5, "window_seconds": 60}');
    const alerts = [];
    for (let i = 0; i < 8; i++) alerts.push(...m.evaluate(read({ name: `db-creds-${i}`, second: i * 5 })));
    assert.deepEqual(alerts.map((a) => a.ruleId), [RULE_ENUMERATION]);
    const f = fieldMap(alerts[0]);
    assert.equal(f['ka.user.name'], 'alice@example.com');
    assert.equal(f['ka.target.name'], 'db-creds-4');
    assert.equal(f['ka.target.namespace'], 'prod');
    assert.equal(f['ka.impuser.name'], undefined);
    assert.equal(f['ka.sourceips'], '(198.51.100.23)');
    assert.equal(f['secrets.distinct_count'], '5');
    assert.match(alerts[0].output, /5 distinct secrets read within 60s \(user=alice@example.com/);
  });

  it('does not count the same secret twice', () => {
    const m = setup('{"threshold": 3}');
    for (let i = 0; i < 10; i++) assert.deepEqual(m.evaluate(read({ name: i % 2 ? 'a' : 'b', second: i })), []);
  });

  it('forgets reads older than the window (event time, not arrival order)', () => {
    const m = setup('{"threshold": 3, "window_seconds": 10}');
    assert.deepEqual(m.evaluate(read({ name: 's1', second: 0 })), []);
    assert.deepEqual(m.evaluate(read({ name: 's2', second: 5 })), []);
    // s1 (second 0) has left the 10 s window that ends at second 12.
    assert.deepEqual(m.evaluate(read({ name: 's3', second: 12 })), []);
    assert.equal(m.evaluate(read({ name: 's4', second: 13 })).length, 1);
  });

  it('alerts again only after the enumeration paused for a whole window', () => {
    const m = setup('{"threshold": 2, "window_seconds": 30}');
    const count = (events) => events.reduce((n, e) => n + m.evaluate(e).length, 0);
    assert.equal(count([0, 10, 20, 30, 40].map((s) => read({ name: `s${s}`, second: s }))), 1);
    assert.equal(count([200, 201].map((s) => read({ name: `s${s}`, second: s }))), 1);
  });

  it('counts a namespace list or watch as one read of that namespace', () => {
    const m = setup('{"threshold": 3, "cluster_wide_reads": false}');
    assert.deepEqual(m.evaluate(read({ verb: 'list', namespace: 'prod', second: 1 })), []);
    assert.deepEqual(m.evaluate(read({ verb: 'watch', namespace: 'prod', second: 2, stage: 'ResponseStarted' })), []);
    assert.deepEqual(m.evaluate(read({ verb: 'list', namespace: 'staging', second: 3 })), []);
    const alerts = m.evaluate(read({ verb: 'list', namespace: 'payments', second: 4 }));
    assert.equal(alerts.length, 1);
    assert.equal(fieldMap(alerts[0])['ka.target.name'], undefined);
  });

  it('ignores refused and failed reads', () => {
    const m = setup('{"threshold": 2}');
    for (const code of [401, 403, 404, 500]) {
      assert.deepEqual(m.evaluate(read({ name: `s${code}`, second: 1, code })), []);
    }
    assert.deepEqual(m.evaluate(read({ name: 'ok', second: 2 })), []);
  });

  it('keys on the authenticated user, so impersonating an allowed identity does not hide the reads', () => {
    const m = setup('{"threshold": 2}');
    const e1 = read({ name: 's1', second: 1 });
    const e2 = read({ name: 's2', second: 2 });
    for (const e of [e1, e2]) {
      e.impersonatedUser = { username: 'system:kube-controller-manager', groups: ['system:authenticated'] };
    }
    assert.deepEqual(m.evaluate(e1), []);
    const alerts = m.evaluate(e2);
    assert.equal(fieldMap(alerts[0])['ka.impuser.name'], 'system:kube-controller-manager');
    assert.equal(fieldMap(alerts[0])['ka.user.name'], 'alice@example.com');
  });

  it('leaves allow-listed users and groups alone, by default the control plane', () => {
    const m = setup('{"threshold": 2}');
    const kcm = { username: 'system:kube-controller-manager', groups: ['system:authenticated'] };
    const node = { username: 'system:node:worker-1', groups: ['system:nodes', 'system:authenticated'] };
    const sa = {
      username: 'system:serviceaccount:kube-system:generic-garbage-collector',
      groups: ['system:serviceaccounts', 'system:serviceaccounts:kube-system', 'system:authenticated'],
    };
    for (const user of [kcm, node, sa]) {
      for (let i = 0; i < 5; i++) assert.deepEqual(m.evaluate(read({ user, name: `s${i}`, second: i })), []);
    }
    const certManager = {
      username: 'system:serviceaccount:cert-manager:cert-manager',
      groups: ['system:serviceaccounts', 'system:serviceaccounts:cert-manager', 'system:authenticated'],
    };
    const configured = setup('{"threshold": 2, "allowed_groups": ["system:serviceaccounts:cert-manager"], "allowed_users": []}');
    for (let i = 0; i < 5; i++) assert.deepEqual(configured.evaluate(read({ user: certManager, name: `s${i}`, second: i })), []);
    // The defaults were replaced, not extended.
    assert.equal(
      [0, 1, 2].reduce((n, i) => n + configured.evaluate(read({ user: kcm, name: `s${i}`, second: i })).length, 0),
      1,
    );
  });

  it('skips events without a timestamp and says so in the log', () => {
    const m = setup('{"threshold": 2}');
    for (let i = 0; i < 3; i++) {
      const e = read({ name: `s${i}` });
      delete e.stageTimestamp;
      delete e.requestReceivedTimestamp;
      assert.deepEqual(m.evaluate(e), []);
    }
    assert.equal(m.log.lines.length, 3);
    assert.equal(m.log.lines[0].level, 'warn');
  });
});

describe('cluster-wide-secret-read', () => {
  it('alerts on a list of the secrets of all namespaces', () => {
    const m = setup();
    const alerts = m.evaluate(read({ verb: 'list', namespace: null, second: 3 }));
    assert.deepEqual(alerts.map((a) => a.ruleId), [RULE_CLUSTER_WIDE]);
    const f = fieldMap(alerts[0]);
    assert.equal(f['ka.uri'], '/api/v1/secrets');
    assert.equal(f['ka.target.namespace'], undefined);
    assert.equal(f['ka.verb'], 'list');
  });

  it('alerts once per user and window for a watch that is audited at start and end', () => {
    const m = setup('{"window_seconds": 600}');
    const started = read({ verb: 'watch', namespace: null, stage: 'ResponseStarted', second: 1, id: 'w1' });
    const completed = read({ verb: 'watch', namespace: null, stage: 'ResponseComplete', second: 400, id: 'w1' });
    assert.equal(m.evaluate(started).length, 1);
    assert.deepEqual(m.evaluate(completed), []);
  });

  it('is off when configured off, and metadata says so', () => {
    const m = setup('{"cluster_wide_reads": false}');
    assert.equal(m.info.rules.find((r) => r.id === RULE_CLUSTER_WIDE).enabled, false);
    assert.deepEqual(m.evaluate(read({ verb: 'list', namespace: null })), []);
  });

  it('is not raised by a namespaced list or a refused one', () => {
    const m = setup();
    assert.deepEqual(m.evaluate(read({ verb: 'list', namespace: 'prod' })), []);
    assert.deepEqual(m.evaluate(read({ verb: 'list', namespace: null, code: 403 })), []);
  });
});

describe('prefilter', () => {
  it('admits only reads of secrets after the response started', () => {
    const m = setup('{"threshold": 2}');
    const configmap = read({ name: 'a', second: 1 });
    configmap.objectRef.resource = 'configmaps';
    assert.deepEqual(m.evaluate(configmap), []);
    assert.deepEqual(m.evaluate(read({ verb: 'delete', name: 'b', second: 2 })), []);
    assert.deepEqual(m.evaluate(read({ name: 'c', second: 3, stage: 'RequestReceived' })), []);
    // None of the above counted: one more read is still under the threshold.
    assert.deepEqual(m.evaluate(read({ name: 'd', second: 4 })), []);
  });

  it('declares the MITRE technique and no raw objects', () => {
    const { info } = setup();
    assert.equal(info.needsRequestObject, false);
    assert.equal(info.needsResponseObject, false);
    for (const rule of info.rules) {
      assert.ok(rule.tags.includes('T1552.007'));
      assert.ok(['warning', 'notice'].includes(rule.priority));
    }
  });
});

describe('configuration', () => {
  it('accepts empty configurations', () => {
    for (const text of ['{}', '', 'null', ' { } ']) assert.equal(parseConfig(text).threshold, 10);
  });

  it('rejects bad configurations with the reason', () => {
    const cases = {
      '[]': 'must be a JSON object',
      '{': 'not valid JSON',
      '{"treshold": 5}': 'unknown configuration key "treshold"',
      '{"threshold": 1}': 'threshold must be an integer from 2',
      '{"threshold": 2.5}': 'threshold must be an integer',
      '{"window_seconds": 0}': 'window_seconds must be an integer from 1 to 86400',
      '{"allowed_users": "bob"}': 'allowed_users must be a list of strings',
      '{"allowed_groups": [1]}': 'allowed_groups must be a list of strings',
      '{"cluster_wide_reads": "yes"}': 'cluster_wide_reads must be true or false',
    };
    for (const [text, reason] of Object.entries(cases)) {
      assert.throws(() => parseConfig(text), (e) => e instanceof ConfigError && e.message.includes(reason), text);
    }
  });

  it('names the configured threshold and window in the rule description', () => {
    const { info } = setup('{"threshold": 25, "window_seconds": 120}');
    assert.match(info.rules[0].description, /25 or more distinct secrets within 120 s/);
  });
});
