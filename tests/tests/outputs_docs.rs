//! The reference documentation kept in step with the code:
//! - docs/configuration.md documents exactly the keys of every section of
//!   the configuration, every output kind has its section, and every TOML
//!   example in it parses and validates;
//! - every metric the host records has HELP text on `/metrics` and a row in
//!   docs/operations.md, and nothing documented there is made up.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use peregrine::config::PeregrineConfig;
use peregrine_tests::root;
use serde_json::Value;

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// (heading text, the text up to the next heading).
fn sections(doc: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut in_code = false;
    for line in doc.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        }
        if !in_code && line.starts_with('#') {
            out.push((
                line.trim_start_matches('#').trim().to_string(),
                String::new(),
            ));
        } else if let Some((_, body)) = out.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    out
}

/// The first cell of every table row that starts with a `code` cell.
fn table_keys(body: &str) -> BTreeSet<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_string)
        .collect()
}

fn object_keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect()
}

/// The output kinds serde knows, from its own error message.
fn output_kinds() -> BTreeSet<String> {
    let err = PeregrineConfig::parse("[outputs.x]\ntype = \"no-such-kind\"\n").unwrap_err();
    let list = err
        .split("expected one of")
        .nth(1)
        .unwrap_or_else(|| panic!("unexpected error: {err}"));
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// A minimal valid table of each output kind.
fn minimal_outputs() -> BTreeMap<&'static str, &'static str> {
    BTreeMap::from([
        ("stdout", ""),
        ("file", "path = \"/tmp/peregrine-doc-test.jsonl\""),
        ("webhook", "url = \"http://127.0.0.1:1/\""),
        ("falcosidekick", "url = \"http://127.0.0.1:2801/\""),
        ("slack", "url = \"https://hooks.slack.com/services/T/B/X\""),
        ("alertmanager", "url = \"http://127.0.0.1:9093\""),
        ("syslog", "address = \"127.0.0.1:514\""),
        ("nats", "url = \"nats://127.0.0.1:4222\""),
    ])
}

/// A configuration with one instance of every optional section, serialised:
/// its objects carry every key, unset ones as null.
fn full_config() -> Value {
    let mut toml = String::from(
        "[server.tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\n\
         [sandbox.modules.m]\n\
         [tenants.t]\ntokens = [\"0123456789abcdef\"]\n\
         [[routes]]\noutputs = [\"stdout\"]\n\
         [[rules.sources]]\ntype = \"oci\"\nreference = \"127.0.0.1:5000/rules/x:1\"\n\
         [[sources]]\ntype = \"file\"\npath = \"/var/log/audit.log\"\n\
         [[sources]]\ntype = \"firehose\"\n\
         [[sources]]\ntype = \"pubsub_push\"\naudience = \"a\"\n\
         [[sources]]\ntype = \"cloudwatch\"\nregion = \"us-east-1\"\ncluster = \"c\"\n",
    );
    for (kind, body) in minimal_outputs() {
        toml.push_str(&format!("[outputs.o_{kind}]\ntype = \"{kind}\"\n{body}\n"));
    }
    let c = PeregrineConfig::parse(&toml).unwrap().validated().unwrap();
    serde_json::to_value(c).unwrap()
}

#[test]
fn every_output_kind_has_a_minimal_example_here() {
    let here: BTreeSet<String> = minimal_outputs().keys().map(|k| k.to_string()).collect();
    assert_eq!(
        here,
        output_kinds(),
        "add the new kind to minimal_outputs()"
    );
}

#[test]
fn configuration_md_documents_exactly_the_keys_of_every_section() {
    let doc = read("docs/configuration.md");
    let secs = sections(&doc);
    let c = full_config();
    let mut expected: BTreeMap<String, Value> = BTreeMap::new();
    for key in [
        "server", "engine", "sandbox", "rules", "output", "store", "auth", "routing", "delivery",
    ] {
        expected.insert(format!("`[{key}]`"), c[key].clone());
    }
    expected.insert("`[server.tls]`".into(), c["server"]["tls"].clone());
    expected.insert("`[server.journal]`".into(), c["server"]["journal"].clone());
    expected.insert(
        "`[engine.quarantine]`".into(),
        c["engine"]["quarantine"].clone(),
    );
    expected.insert(
        "`[sandbox.modules.<module>]`".into(),
        c["sandbox"]["modules"]["m"].clone(),
    );
    expected.insert("`[tenants.<id>]`".into(), c["tenants"]["t"].clone());
    expected.insert("`[[routes]]`".into(), c["routes"][0].clone());
    expected.insert(
        "`[[rules.sources]]` (`type = \"oci\"`)".into(),
        c["rules"]["sources"][0].clone(),
    );
    expected.insert(
        "`[outputs.<name>.delivery]`".into(),
        c["outputs"]["o_webhook"]["delivery"].clone(),
    );
    expected.insert(
        "`tls = { ... }` of the HTTP outputs".into(),
        c["outputs"]["o_webhook"]["tls"].clone(),
    );
    for (i, kind) in ["file", "firehose", "pubsub_push", "cloudwatch"]
        .iter()
        .enumerate()
    {
        expected.insert(
            format!("`type = \"{kind}\"` source"),
            c["sources"][i].clone(),
        );
    }
    for kind in output_kinds() {
        expected.insert(
            format!("`type = \"{kind}\"`"),
            c["outputs"][format!("o_{kind}")].clone(),
        );
    }

    let mut problems = Vec::new();
    for (heading, value) in &expected {
        let Some((_, body)) = secs.iter().find(|(h, _)| h == heading) else {
            problems.push(format!("no section `{heading}`"));
            continue;
        };
        let want = object_keys(value);
        let have = table_keys(body);
        for k in want.difference(&have) {
            problems.push(format!("{heading}: key `{k}` is not documented"));
        }
        for k in have.difference(&want) {
            problems.push(format!(
                "{heading}: documents `{k}`, which the configuration does not have"
            ));
        }
    }
    // Every table of keys belongs to a section checked above.
    for (heading, body) in &secs {
        if !table_keys(body).is_empty()
            && !expected.contains_key(heading)
            && heading != "Environment"
        {
            problems.push(format!(
                "section `{heading}` has a key table that no configuration type backs"
            ));
        }
    }
    // Every top-level section of the configuration has a heading.
    for key in object_keys(&serde_json::to_value(PeregrineConfig::default()).unwrap()) {
        let found = secs.iter().any(|(h, _)| {
            h.contains(&format!("`[{key}]`"))
                || h.contains(&format!("`[[{key}]]`"))
                || h.contains(&format!("`[{key}."))
        });
        if !found {
            problems.push(format!("top-level section `{key}` has no heading"));
        }
    }
    assert!(
        problems.is_empty(),
        "docs/configuration.md is out of step:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn every_toml_example_in_the_configuration_reference_parses_and_validates() {
    let doc = read("docs/configuration.md") + &read("docs/managed-clusters.md");
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in doc.lines() {
        match (&mut current, line.trim()) {
            (None, "```toml") => current = Some(String::new()),
            (Some(b), "```") => {
                blocks.push(std::mem::take(b));
                current = None;
            }
            (Some(b), _) => {
                b.push_str(line);
                b.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(
        blocks.len() >= 8,
        "expected the reference's TOML examples, found {}",
        blocks.len()
    );
    for b in &blocks {
        let c = PeregrineConfig::parse(b)
            .unwrap_or_else(|e| panic!("example does not parse: {e}\n{b}"));
        c.validated()
            .unwrap_or_else(|e| panic!("example is invalid: {e}\n{b}"));
    }
}

/// Every `"peregrine_..."` string in the host's sources, by file.
fn metric_literals(dir: &Path, out: &mut BTreeMap<String, BTreeSet<String>>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            metric_literals(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            for piece in text.split("\"peregrine_").skip(1) {
                let name: String = piece
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if piece[name.len()..].starts_with('"') {
                    out.entry(format!("peregrine_{name}"))
                        .or_default()
                        .insert(path.file_name().unwrap().to_string_lossy().into_owned());
                }
            }
        }
    }
}

#[test]
fn every_metric_is_described_and_documented() {
    let mut literals = BTreeMap::new();
    metric_literals(&root().join("host/src"), &mut literals);
    let described: BTreeSet<String> = literals
        .iter()
        .filter(|(_, files)| files.contains("prometheus.rs"))
        .map(|(n, _)| n.clone())
        .collect();
    let recorded: BTreeSet<String> = literals
        .iter()
        .filter(|(_, files)| files.iter().any(|f| f != "prometheus.rs"))
        .map(|(n, _)| n.clone())
        .collect();
    assert!(recorded.len() >= 25, "found only {recorded:?}");
    let ops = read("docs/operations.md");
    let documented: BTreeSet<String> = ops
        .lines()
        .filter_map(|l| l.strip_prefix("| `peregrine_"))
        .filter_map(|l| l.split('`').next())
        .map(|n| format!("peregrine_{n}"))
        .collect();
    let mut problems = Vec::new();
    for m in recorded.difference(&described) {
        problems.push(format!(
            "{m} is recorded but has no describe_* in host/src/prometheus.rs"
        ));
    }
    for m in described.difference(&recorded) {
        problems.push(format!(
            "{m} is described in prometheus.rs but nothing records it"
        ));
    }
    for m in recorded.difference(&documented) {
        problems.push(format!("{m} has no row in docs/operations.md"));
    }
    for m in documented.difference(&recorded) {
        problems.push(format!(
            "docs/operations.md documents {m}, which nothing records"
        ));
    }
    assert!(
        problems.is_empty(),
        "metrics out of step:\n  {}",
        problems.join("\n  ")
    );
}
