// Detection logic of the secret-enumeration module, in plain JavaScript.
//
// Nothing here imports the WIT interfaces: the host's `state` and `log`
// functions are passed to createModule(), so `node --test` runs the same code
// with stand-ins. index.js wires it to the component's imports and exports.
//
// Reading secrets one after another is how stolen credentials are turned
// into more credentials: service-account tokens, registry credentials, cloud
// keys, TLS keys (MITRE ATT&CK T1552.007, Unsecured Credentials: Container
// API). A person or a workload rarely needs more than a handful of secrets in
// a few minutes; controllers that do are allow-listed.
//
// Two rules:
// - `secret-enumeration`: one user read `threshold` distinct secrets (or
//   whole namespaces of secrets, through list/watch) within `window_seconds`
//   of event time.
// - `cluster-wide-secret-read`: one user listed or watched the secrets of
//   every namespace at once, which reads them all in one request.

export const MODULE_NAME = 'secret-enumeration';
export const MODULE_VERSION = '1.0.0';

export const RULE_ENUMERATION = 'secret-enumeration';
export const RULE_CLUSTER_WIDE = 'cluster-wide-secret-read';

const TAGS = ['k8s', 'secrets', 'credential-access', 'discovery', 'T1552.007'];

export const DEFAULT_CONFIG = Object.freeze({
  // Distinct secrets (a list or watch of a namespace counts as one) that
  // make an enumeration.
  threshold: 10,
  window_seconds: 600,
  // The control plane's own identities read secrets all day. Allow a
  // controller through its service-account namespace group, e.g.
  // "system:serviceaccounts:cert-manager", or its exact username.
  allowed_users: ['system:kube-controller-manager', 'system:apiserver'],
  allowed_groups: ['system:nodes', 'system:serviceaccounts:kube-system'],
  // Whether `cluster-wide-secret-read` is enabled.
  cluster_wide_reads: true,
});

const MAX_WINDOW_SECONDS = 86400;

export class ConfigError extends Error {}

function stringList(config, key) {
  const value = config[key];
  if (!Array.isArray(value) || !value.every((v) => typeof v === 'string')) {
    throw new ConfigError(`${key} must be a list of strings`);
  }
  return [...value];
}

function integerIn(config, key, min, max) {
  const value = config[key];
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new ConfigError(`${key} must be an integer from ${min} to ${max}, not ${JSON.stringify(value)}`);
  }
  return value;
}

// Validates the module configuration (JSON text); given keys replace the
// defaults. Throws ConfigError with a message for the operator.
export function parseConfig(text) {
  const trimmed = (text ?? '').trim();
  let given = {};
  if (trimmed !== '' && trimmed !== 'null') {
    try {
      given = JSON.parse(trimmed);
    } catch (e) {
      throw new ConfigError(`configuration is not valid JSON: ${e.message}`);
    }
  }
  if (given === null) given = {};
  if (typeof given !== 'object' || Array.isArray(given)) {
    throw new ConfigError('configuration must be a JSON object');
  }
  for (const key of Object.keys(given)) {
    if (!Object.hasOwn(DEFAULT_CONFIG, key)) {
      const known = Object.keys(DEFAULT_CONFIG).sort().join(', ');
      throw new ConfigError(`unknown configuration key "${key}" (known keys: ${known})`);
    }
  }
  const merged = { ...DEFAULT_CONFIG, ...given };
  if (typeof merged.cluster_wide_reads !== 'boolean') {
    throw new ConfigError('cluster_wide_reads must be true or false');
  }
  return {
    // A threshold of 1 would alert on every secret read.
    threshold: integerIn(merged, 'threshold', 2, 100000),
    window_seconds: integerIn(merged, 'window_seconds', 1, MAX_WINDOW_SECONDS),
    allowed_users: stringList(merged, 'allowed_users'),
    allowed_groups: stringList(merged, 'allowed_groups'),
    cluster_wide_reads: merged.cluster_wide_reads,
  };
}

// Falco renders list-valued fields as `(a,b)`.
export function falcoList(items) {
  return `(${items.join(',')})`;
}

function na(value) {
  return value == null ? '<NA>' : String(value);
}

// Options arrive as `undefined` from the component bindings; stand-ins in
// tests may use null. Both mean "absent".
function opt(value) {
  return value == null ? undefined : value;
}

function succeeded(event) {
  const code = event.responseStatus?.code;
  // No status: the apiserver did not say it failed, so the read counts.
  return code == null || (code >= 200 && code < 300);
}

// host: { distinctAdd(key, member, windowSeconds, nowUnixNanos: bigint) -> bigint,
//         firstSeen(key, ttlSeconds, nowUnixNanos: bigint) -> boolean,
//         log(level, message) }  with level one of trace|debug|info|warn|error.
export function createModule(host) {
  let config = parseConfig('{}');

  function allowed(user) {
    return config.allowed_users.includes(user.username) || user.groups.some((g) => config.allowed_groups.includes(g));
  }

  function fields(event, extra) {
    const ref = event.objectRef;
    const imp = opt(event.impersonatedUser);
    return [
      ['ka.user.name', event.user.username],
      ['ka.user.groups', falcoList(event.user.groups)],
      ['ka.impuser.name', imp?.username],
      ['ka.verb', event.verb],
      ['ka.uri', event.requestUri],
      ['ka.target.resource', opt(ref?.resource)],
      ['ka.target.namespace', opt(ref?.namespace)],
      ['ka.target.name', opt(ref?.name)],
      ['ka.response.code', event.responseStatus?.code == null ? undefined : String(event.responseStatus.code)],
      ['ka.sourceips', falcoList(event.sourceIps)],
      ['ka.useragent', opt(event.userAgent)],
      ...extra,
    ];
  }

  return {
    configure(text) {
      config = parseConfig(text);
    },

    metadata() {
      const prefilter = (verbs) => ({
        verbs,
        resources: ['secrets'],
        subresources: [],
        // A watch is audited when it starts and again when it ends, minutes
        // later; counting distinct members makes the second one harmless.
        stages: ['ResponseStarted', 'ResponseComplete'],
      });
      return {
        name: MODULE_NAME,
        version: MODULE_VERSION,
        rules: [
          {
            id: RULE_ENUMERATION,
            name: 'Secret Enumeration',
            description: `A user outside the allow-list read ${config.threshold} or more distinct secrets within ${config.window_seconds} s`,
            priority: 'warning',
            tags: TAGS,
            prefilter: prefilter(['get', 'list', 'watch']),
            enabled: true,
          },
          {
            id: RULE_CLUSTER_WIDE,
            name: 'Secrets Read Across All Namespaces',
            description: 'A user outside the allow-list listed or watched the secrets of every namespace',
            priority: 'warning',
            tags: TAGS,
            prefilter: prefilter(['list', 'watch']),
            enabled: config.cluster_wide_reads,
          },
        ],
        needsRequestObject: false,
        needsResponseObject: false,
      };
    },

    evaluate(event) {
      if (!succeeded(event) || allowed(event.user)) return [];
      const now = BigInt(event.timeUnixNanos);
      if (now === 0n) {
        // Without event time there is no window to count in.
        host.log('warn', `secret read without a timestamp ignored (auditID ${event.auditId})`);
        return [];
      }
      const ref = event.objectRef ?? {};
      const namespace = opt(ref.namespace);
      const name = opt(ref.name);
      const user = event.user.username;
      const alerts = [];
      const windowSeconds = config.window_seconds;

      const clusterWide = namespace === undefined && name === undefined && event.verb !== 'get';
      if (clusterWide && config.cluster_wide_reads && host.firstSeen(`cluster-wide:${user}`, windowSeconds, now)) {
        alerts.push({
          ruleId: RULE_CLUSTER_WIDE,
          priority: undefined,
          output: `Secrets of all namespaces read (user=${user} verb=${event.verb} uri=${event.requestUri} ` +
            `sourceips=${falcoList(event.sourceIps)} useragent=${na(opt(event.userAgent))})`,
          fields: fields(event, []),
          tags: [],
        });
      }

      // What the request read: one secret, or all secrets of a namespace or
      // of the cluster. A list counts as one, whatever it returned, since the
      // audit event does not say how many secrets came back.
      const member = `${namespace ?? '*'}/${name ?? '*'}`;
      const count = Number(host.distinctAdd(`read:${user}`, member, windowSeconds, now));
      // firstSeen is refreshed by every read above the threshold, so an
      // enumeration raises one alert and then stays quiet until the user has
      // paused for a whole window.
      if (count >= config.threshold && host.firstSeen(`alerted:${user}`, windowSeconds, now)) {
        alerts.push({
          ruleId: RULE_ENUMERATION,
          priority: undefined,
          output: `Secret enumeration: ${count} distinct secrets read within ${windowSeconds}s ` +
            `(user=${user} threshold=${config.threshold} last=${member} verb=${event.verb} ` +
            `sourceips=${falcoList(event.sourceIps)} useragent=${na(opt(event.userAgent))})`,
          fields: fields(event, [
            ['secrets.distinct_count', String(count)],
            ['secrets.window_seconds', String(windowSeconds)],
          ]),
          tags: [],
        });
      }
      return alerts;
    },
  };
}
