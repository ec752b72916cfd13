//! The event stream every figure runs over.
//!
//! The bundled corpus (Falco's trace files, the fixtures, real cluster logs)
//! holds under a thousand events and over-represents attacks, so the default
//! stream draws from it with the verb mix of a real cluster's audit log:
//! mostly reads and controller updates, some writes. `watch` and `update`
//! events, which the corpus lacks, are made from its `list` and `patch`
//! events by changing the verb. Every event gets its own auditID, so the
//! webhook's deduplication keeps them all.
//!
//! With `--events`, the user's events are replayed in their own order and
//! mix until the count is reached.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use peregrine_sdk::audit::AuditEvent;
use serde_json::Value;

use crate::ingest::decode::decode_payload;
use crate::ingest::replay::{Input, expand_inputs, read_input};

/// Share of each verb in the default stream, in percent. Shaped after the
/// audit logs of ordinary clusters: controllers and kubelets get, list and
/// watch constantly and update their leases and status; people and
/// pipelines create, patch and delete now and then.
const VERB_MIX: [(&str, u32); 7] = [
    ("get", 34),
    ("list", 14),
    ("watch", 10),
    ("update", 16),
    ("patch", 8),
    ("create", 12),
    ("delete", 6),
];

/// The events, decoded as the webhook decodes them, and their JSON text.
pub(crate) struct Stream {
    pub events: Vec<AuditEvent>,
    /// One compact JSON document per event (for the HTTP bodies and Rego).
    pub lines: Vec<String>,
    /// Distinct source events the stream was drawn from.
    pub templates: usize,
    pub verbs: BTreeMap<String, usize>,
    /// Where the events came from, for the report.
    pub source: String,
}

impl Stream {
    /// The first `n` events, for warm-up passes (no JSON lines).
    pub fn head(&self, n: usize) -> Stream {
        Stream {
            events: self.events.iter().take(n).cloned().collect(),
            lines: Vec::new(),
            templates: 0,
            verbs: BTreeMap::new(),
            source: String::new(),
        }
    }

    pub fn mean_bytes(&self) -> f64 {
        self.lines.iter().map(String::len).sum::<usize>() as f64 / self.lines.len().max(1) as f64
    }

    pub fn mix_summary(&self) -> String {
        let n = self.events.len().max(1) as f64;
        let mut v: Vec<(&String, &usize)> = self.verbs.iter().collect();
        v.sort_by(|a, b| b.1.cmp(a.1));
        v.iter()
            .map(|(verb, c)| format!("{verb} {:.0}%", **c as f64 * 100.0 / n))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The JSON body of an EventList holding `lines`, as the apiserver posts.
    pub fn event_list(lines: &[String]) -> Vec<u8> {
        let mut body = String::with_capacity(lines.iter().map(|l| l.len() + 1).sum::<usize>() + 96);
        body.push_str(
            r#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{},"items":["#,
        );
        for (i, l) in lines.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(l);
        }
        body.push_str("]}");
        body.into_bytes()
    }
}

/// Where the bundled corpus lives: the repository's fixtures, and the shared
/// audit corpus checked out next to the repository.
fn default_sources() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut v = vec![root.join("tests/fixtures/falco")];
    let shared = root.join("../shared/audit-corpus");
    v.push(shared.join("falco"));
    v.push(shared.join("public"));
    v.into_iter().filter(|p| p.exists()).collect()
}

fn read_templates(paths: &[PathBuf], max_event_bytes: usize) -> anyhow::Result<Vec<Value>> {
    let inputs = expand_inputs(paths).context("cannot read the events")?;
    let mut out = Vec::new();
    for input in &inputs {
        let Input::File(path) = input else {
            anyhow::bail!("--events: stdin is not supported, give files or directories");
        };
        // Decoded by the webhook's own decoder, so anything it would reject
        // (Falco's `{"kind": 0}` robustness case, for one) stays out.
        let decoded = read_input(input, max_event_bytes)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if decoded.events.is_empty() {
            continue;
        }
        let text = std::fs::read_to_string(path)?;
        for v in json_documents(&text) {
            match v {
                Value::Object(ref o)
                    if o.get("kind").and_then(Value::as_str) == Some("EventList") =>
                {
                    if let Some(items) = o.get("items").and_then(Value::as_array) {
                        out.extend(items.iter().cloned());
                    }
                }
                Value::Array(items) => out.extend(items),
                Value::Object(_) => out.push(v),
                _ => {}
            }
        }
    }
    // Keep exactly what the webhook accepts.
    out.retain(|v| {
        let text = v.to_string();
        decode_payload(text.as_bytes(), max_event_bytes).is_ok_and(|d| d.events.len() == 1)
    });
    Ok(out)
}

/// One document, else JSON lines.
fn json_documents(text: &str) -> Vec<Value> {
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        return vec![v];
    }
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// A small deterministic generator: the same stream on every run.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn verb_of(v: &Value) -> &str {
    v.get("verb").and_then(Value::as_str).unwrap_or("")
}

/// Builds a stream of `count` events from `paths` (or the bundled corpus).
pub(crate) fn build(
    paths: &[PathBuf],
    count: usize,
    max_event_bytes: usize,
) -> anyhow::Result<Stream> {
    let user = !paths.is_empty();
    let sources = if user {
        paths.to_vec()
    } else {
        default_sources()
    };
    anyhow::ensure!(
        !sources.is_empty(),
        "the bundled audit corpus is not here (tests/fixtures/falco, ../shared/audit-corpus): pass --events PATH"
    );
    let templates = read_templates(&sources, max_event_bytes)?;
    anyhow::ensure!(
        !templates.is_empty(),
        "no audit events found in {}",
        sources
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );

    let mut picked: Vec<Value> = Vec::with_capacity(count);
    if user {
        picked.extend(templates.iter().cycle().take(count).cloned());
    } else {
        let mut by_verb: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
        for t in &templates {
            by_verb.entry(verb_of(t)).or_default().push(t);
        }
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let total: u32 = VERB_MIX.iter().map(|(_, w)| w).sum();
        while picked.len() < count {
            let mut roll = (rng.next() % u64::from(total)) as u32;
            let verb = VERB_MIX
                .iter()
                .find(|(_, w)| {
                    if roll < *w {
                        true
                    } else {
                        roll -= w;
                        false
                    }
                })
                .map_or("get", |(v, _)| *v);
            // `watch` and `update` are made from `list` and `patch` events.
            let source_verb = match verb {
                "watch" => "list",
                "update" => "patch",
                v => v,
            };
            let Some(pool) = by_verb.get(source_verb).filter(|p| !p.is_empty()) else {
                // Not in this corpus: any event at all keeps the count right.
                picked.push(templates[rng.below(templates.len())].clone());
                continue;
            };
            let mut ev = pool[rng.below(pool.len())].clone();
            if verb != source_verb {
                ev["verb"] = Value::String(verb.to_string());
                if verb == "watch"
                    && let Some(uri) = ev.get("requestURI").and_then(Value::as_str)
                {
                    let sep = if uri.contains('?') { '&' } else { '?' };
                    ev["requestURI"] = Value::String(format!("{uri}{sep}watch=true"));
                }
            }
            picked.push(ev);
        }
    }

    let mut events = Vec::with_capacity(count);
    let mut lines = Vec::with_capacity(count);
    let mut verbs: BTreeMap<String, usize> = BTreeMap::new();
    for (i, mut v) in picked.into_iter().enumerate() {
        v["auditID"] = Value::String(format!("bench-{i:08}"));
        let line = v.to_string();
        let mut decoded = decode_payload(line.as_bytes(), max_event_bytes)
            .map_err(|e| anyhow::anyhow!("a stream event does not decode: {e}"))?;
        let ev = decoded
            .events
            .pop()
            .context("a stream event was rejected by the decoder")?;
        *verbs.entry(ev.verb.clone()).or_default() += 1;
        events.push(ev);
        lines.push(line);
    }
    Ok(Stream {
        events,
        lines,
        templates: templates.len(),
        verbs,
        source: if user {
            sources
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        } else {
            "bundled corpus, cluster verb mix".into()
        },
    })
}
