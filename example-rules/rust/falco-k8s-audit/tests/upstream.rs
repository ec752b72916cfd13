//! The pack against the Falco release it follows: the `k8s_audit_rules.yaml`
//! of the k8saudit plugin v0.18.0, read from the shared upstream directory
//! (or from `$PEREGRINE_FALCO_RULES`, to check a new release; see
//! docs/falco-rules.md). Every rule's name, description, priority, tags and
//! output, the rule order, every list, the verbs of every condition, the
//! macros that stand for the pack's lists and default-off switches, and the
//! fields the conditions read are compared, and every difference is named.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use falco_k8s_audit::LISTS;
use falco_k8s_audit::rules::{DefaultState, RULES};
use yaml_rust2::{Yaml, YamlLoader};

fn rules_file() -> PathBuf {
    let path = std::env::var_os("PEREGRINE_FALCO_RULES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // `upstream/` sits beside the audit corpus in the shared directory.
            common::corpus_dir().join("../upstream/falco-k8saudit-0.18.0/k8s_audit_rules.yaml")
        });
    assert!(
        path.is_file(),
        "Falco's rules file is missing at {} (the shared upstream directory next to the repository)",
        path.display()
    );
    path
}

struct Upstream {
    rules: Vec<Yaml>,
    lists: BTreeMap<String, Vec<String>>,
    macros: BTreeMap<String, String>,
}

fn text(y: &Yaml, key: &str) -> String {
    y[key]
        .as_str()
        .unwrap_or_else(|| panic!("`{key}` is not a string in {y:?}"))
        .trim()
        .to_string()
}

fn load() -> Upstream {
    let source = std::fs::read_to_string(rules_file()).unwrap();
    let docs = YamlLoader::load_from_str(&source).unwrap();
    let items = docs[0].as_vec().expect("the rules file is a YAML list");
    let mut up = Upstream {
        rules: Vec::new(),
        lists: BTreeMap::new(),
        macros: BTreeMap::new(),
    };
    for item in items {
        if item["rule"].as_str().is_some() {
            up.rules.push(item.clone());
        } else if let Some(name) = item["list"].as_str() {
            let values = item["items"]
                .as_vec()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect();
            up.lists.insert(name.to_string(), values);
        } else if let Some(name) = item["macro"].as_str() {
            up.macros
                .insert(name.to_string(), text(item, "condition").replace('\n', " "));
        }
    }
    up
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// A condition with every macro replaced by its (expanded) condition.
fn expand(condition: &str, macros: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        match macros.get(word.as_str()) {
            Some(body) => {
                out.push('(');
                out.push_str(&expand(body, macros));
                out.push(')');
            }
            None => out.push_str(word),
        }
        word.clear();
    };
    for c in condition.chars() {
        // A macro name is a whole word: not part of a field (`ka.verb`) or list item.
        if is_ident(c) || (c == '.' && !word.is_empty()) {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

/// The verbs an expanded condition names (`ka.verb=x`, `ka.verb in (x, y)`).
fn condition_verbs(condition: &str) -> BTreeSet<String> {
    let mut verbs = BTreeSet::new();
    for (i, _) in condition.match_indices("ka.verb") {
        let rest = condition[i + "ka.verb".len()..].trim_start();
        if let Some(v) = rest.strip_prefix('=') {
            let v: String = v
                .trim_start()
                .chars()
                .take_while(|&c| is_ident(c))
                .collect();
            verbs.insert(v);
        } else if let Some(list) = rest.strip_prefix("in")
            && let Some(list) = list.trim_start().strip_prefix('(')
        {
            let list = &list[..list.find(')').unwrap()];
            verbs.extend(list.split(',').map(|v| v.trim().to_string()));
        }
    }
    verbs
}

/// The `ka.*` and `jevt.*` fields an expanded condition reads.
fn condition_fields(condition: &str) -> BTreeSet<String> {
    let mut fields = BTreeSet::new();
    for prefix in ["ka.", "jevt."] {
        for (i, _) in condition.match_indices(prefix) {
            if i > 0 && is_ident(condition[..i].chars().last().unwrap()) {
                continue;
            }
            let field: String = condition[i..]
                .chars()
                .take_while(|&c| is_ident(c) || c == '.')
                .collect();
            let field = match condition[i + field.len()..].strip_prefix('[') {
                Some(rest) => format!("{field}[{}]", &rest[..rest.find(']').unwrap()]),
                None => field,
            };
            fields.insert(field);
        }
    }
    fields
}

fn falco_priority(p: &str) -> &str {
    match p {
        "INFO" | "INFORMATIONAL" => "Informational",
        "WARNING" => "Warning",
        "NOTICE" => "Notice",
        "ERROR" => "Error",
        "DEBUG" => "Debug",
        "CRITICAL" => "Critical",
        "ALERT" => "Alert",
        "EMERGENCY" => "Emergency",
        other => panic!("unknown priority {other}"),
    }
}

#[test]
fn rules_names_order_descriptions_priorities_tags_and_outputs_are_falcos() {
    let up = load();
    let names: Vec<String> = up.rules.iter().map(|r| text(r, "rule")).collect();
    let ours: Vec<&str> = RULES.iter().map(|r| r.name).collect();
    assert_eq!(names, ours, "the rules or their order differ");
    let mut diffs = Vec::new();
    for (r, def) in up.rules.iter().zip(RULES) {
        let name = def.name;
        // Falco's YAML folds long text (`>`): lines join with one space.
        let desc = text(r, "desc").replace('\n', " ");
        let output = text(r, "output").replace('\n', " ");
        if desc != def.desc {
            diffs.push(format!(
                "{name}: desc\n  falco: {desc}\n  pack:  {}",
                def.desc
            ));
        }
        if output != def.output {
            diffs.push(format!(
                "{name}: output\n  falco: {output}\n  pack:  {}",
                def.output
            ));
        }
        let priority = falco_priority(r["priority"].as_str().unwrap());
        if priority != def.priority.as_falco_str() {
            diffs.push(format!(
                "{name}: priority {priority}, pack {}",
                def.priority.as_falco_str()
            ));
        }
        let tags: Vec<&str> = r["tags"]
            .as_vec()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        if tags != def.tags {
            diffs.push(format!("{name}: tags {tags:?}, pack {:?}", def.tags));
        }
        if r["source"].as_str() != Some("k8s_audit") {
            diffs.push(format!("{name}: source is not k8s_audit"));
        }
    }
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}

#[test]
fn conditions_name_the_verbs_of_the_prefilters() {
    let up = load();
    let mut diffs = Vec::new();
    for (r, def) in up.rules.iter().zip(RULES) {
        let condition = expand(&text(r, "condition").replace('\n', " "), &up.macros);
        let falco = condition_verbs(&condition);
        let ours: BTreeSet<String> = def.verbs.iter().map(|v| v.to_string()).collect();
        if falco != ours {
            diffs.push(format!(
                "{}: Falco's verbs {falco:?}, pack {ours:?}",
                def.name
            ));
        }
    }
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}

#[test]
fn conditions_read_the_fields_the_pack_implements() {
    let up = load();
    let mut used = BTreeSet::new();
    for r in &up.rules {
        used.extend(condition_fields(&expand(
            &text(r, "condition").replace('\n', " "),
            &up.macros,
        )));
    }
    // Each is implemented in src/fields.rs with the plugin's semantics; a
    // release that reads a new field shows up here.
    let implemented: BTreeSet<String> = [
        "jevt.rawtime",
        "jevt.value[/requestObject/spec/tls]",
        "jevt.value[/stage]",
        "ka.auth.decision",
        "ka.req.binding.role",
        "ka.req.configmap.obj",
        "ka.req.pod.containers.image.repository",
        "ka.req.pod.containers.privileged",
        "ka.req.pod.ephemeralContainers.privileged",
        "ka.req.pod.host_ipc",
        "ka.req.pod.host_network",
        "ka.req.pod.host_pid",
        "ka.req.pod.initContainers.privileged",
        "ka.req.pod.volumes.hostpath",
        "ka.req.role.rules.resources",
        "ka.req.role.rules.verbs",
        "ka.req.service.type",
        "ka.response.code",
        "ka.target.name",
        "ka.target.namespace",
        "ka.target.resource",
        "ka.target.subresource",
        "ka.uri",
        "ka.user.name",
        "ka.verb",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(used, implemented);
}

#[test]
fn lists_and_the_macros_the_pack_makes_lists_are_falcos() {
    let up = load();
    let ours: BTreeMap<&str, Vec<String>> = LISTS
        .iter()
        .map(|l| (l.name, l.defaults.iter().map(|s| s.to_string()).collect()))
        .collect();
    let mut diffs = Vec::new();
    for (name, items) in &up.lists {
        let Some(pack) = ours.get(name.as_str()) else {
            diffs.push(format!("list `{name}` is not in the pack"));
            continue;
        };
        // A Falco list may include another list by name; the pack keeps the
        // included list apart, and its conditions read both.
        let (refs, values): (Vec<&String>, Vec<&String>) =
            items.iter().partition(|i| up.lists.contains_key(*i));
        let values: Vec<String> = values.into_iter().cloned().collect();
        if &values != pack {
            diffs.push(format!(
                "list `{name}`\n  falco: {values:?}\n  pack:  {pack:?}"
            ));
        }
        for r in refs {
            if !ours.contains_key(r.as_str()) {
                diffs.push(format!(
                    "list `{name}` includes `{r}`, which the pack lacks"
                ));
            }
        }
    }
    // The pack's lists that are macros in Falco's file.
    let quoted = |m: &str| -> Vec<String> {
        up.macros[m]
            .split('"')
            .skip(1)
            .step_by(2)
            .map(String::from)
            .collect()
    };
    let paths: Vec<String> = {
        let m = &up.macros["sensitive_vol_mount"];
        let inner = &m[m.find("intersects (").unwrap() + "intersects (".len()..];
        inner[..inner.find(')').unwrap()]
            .split(',')
            .map(|p| p.trim().to_string())
            .collect()
    };
    for (list, falco) in [
        (
            "private_credential_keywords",
            quoted("contains_private_credentials"),
        ),
        ("sensitive_vol_mount_paths", paths),
    ] {
        if falco != ours[list] {
            diffs.push(format!(
                "list `{list}`\n  falco: {falco:?}\n  pack:  {:?}",
                ours[list]
            ));
        }
    }
    let from_macros = ["private_credential_keywords", "sensitive_vol_mount_paths"];
    let extra: Vec<&&str> = ours
        .keys()
        .filter(|l| !up.lists.contains_key(**l) && !from_macros.contains(l))
        .filter(|l| **l != "allowed_k8s_container_images")
        .collect();
    if !extra.is_empty() {
        diffs.push(format!("pack lists Falco does not have: {extra:?}"));
    }
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}

fn words(s: &str) -> Vec<&str> {
    s.split(|c: char| !is_ident(c))
        .filter(|w| !w.is_empty())
        .collect()
}

/// The macro that keeps a rule off in Falco's file: one that is always true
/// under `not`, or always false without it, in the condition or in a macro
/// the condition names (`kall` holds `consider_all_events`).
fn off_macro<'u>(condition: &str, up: &'u Upstream) -> Option<&'u str> {
    let mut bodies = vec![condition.to_string()];
    bodies.extend(
        words(condition)
            .into_iter()
            .filter_map(|w| up.macros.get(w).cloned()),
    );
    up.macros.iter().find_map(|(name, body)| {
        let off = bodies.iter().any(|b| {
            let negated = b.contains(&format!("not {name}"));
            match body.as_str() {
                "(k8s_audit_always_true)" => negated,
                "(k8s_audit_never_true)" => !negated && words(b).contains(&name.as_str()),
                _ => false,
            }
        });
        off.then_some(name.as_str())
    })
}

#[test]
fn rules_off_by_default_are_the_ones_falcos_macros_keep_off() {
    let up = load();
    for (r, def) in up.rules.iter().zip(RULES) {
        let condition = text(r, "condition");
        let off = match def.default {
            DefaultState::On => None,
            DefaultState::Off { falco_macro } => Some(falco_macro),
        };
        assert_eq!(off, off_macro(&condition, &up), "{}", def.name);
        // The activity rules are the ones behind `kactivity`.
        assert_eq!(
            words(&condition).contains(&"kactivity"),
            def.activity,
            "{}",
            def.name
        );
    }
}
