//! Builders for module and rule metadata.

use crate::{ModuleInfo, Prefilter, Priority, RuleInfo};

/// Starts the metadata of a module.
pub fn module(name: impl Into<String>, version: impl Into<String>) -> ModuleBuilder {
    ModuleBuilder(ModuleInfo {
        name: name.into(),
        version: version.into(),
        rules: Vec::new(),
        needs_request_object: false,
        needs_response_object: false,
    })
}

/// Starts the metadata of one rule. The rule is enabled and matches every
/// event until prefilter methods narrow it.
pub fn rule(id: impl Into<String>, name: impl Into<String>, priority: Priority) -> RuleBuilder {
    RuleBuilder(RuleInfo {
        id: id.into(),
        name: name.into(),
        description: String::new(),
        priority,
        tags: Vec::new(),
        prefilter: Prefilter {
            verbs: Vec::new(),
            resources: Vec::new(),
            subresources: Vec::new(),
            stages: Vec::new(),
        },
        enabled: true,
    })
}

/// Builds a [`ModuleInfo`].
pub struct ModuleBuilder(ModuleInfo);

impl ModuleBuilder {
    pub fn rule(mut self, rule: impl Into<RuleInfo>) -> Self {
        self.0.rules.push(rule.into());
        self
    }

    /// The module reads `requestObject` (pod specs, RBAC rules, ...).
    pub fn needs_request_object(mut self) -> Self {
        self.0.needs_request_object = true;
        self
    }

    /// The module reads `responseObject`.
    pub fn needs_response_object(mut self) -> Self {
        self.0.needs_response_object = true;
        self
    }

    pub fn build(self) -> ModuleInfo {
        self.0
    }
}

/// Builds a [`RuleInfo`].
pub struct RuleBuilder(RuleInfo);

fn strings<I, S>(items: I) -> Vec<String>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    items.into_iter().map(Into::into).collect()
}

impl RuleBuilder {
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.0.description = description.into();
        self
    }

    pub fn tags<I: IntoIterator<Item = S>, S: Into<String>>(mut self, tags: I) -> Self {
        self.0.tags.extend(strings(tags));
        self
    }

    /// Only events with one of these verbs can match.
    pub fn verbs<I: IntoIterator<Item = S>, S: Into<String>>(mut self, verbs: I) -> Self {
        self.0.prefilter.verbs.extend(strings(verbs));
        self
    }

    /// Only events on one of these resources (`objectRef.resource`) can match.
    pub fn resources<I: IntoIterator<Item = S>, S: Into<String>>(mut self, resources: I) -> Self {
        self.0.prefilter.resources.extend(strings(resources));
        self
    }

    /// Only events on one of these subresources can match.
    pub fn subresources<I: IntoIterator<Item = S>, S: Into<String>>(
        mut self,
        subresources: I,
    ) -> Self {
        self.0.prefilter.subresources.extend(strings(subresources));
        self
    }

    /// Only events at one of these stages can match.
    pub fn stages<I: IntoIterator<Item = S>, S: Into<String>>(mut self, stages: I) -> Self {
        self.0.prefilter.stages.extend(strings(stages));
        self
    }

    pub fn enabled(mut self, enabled: bool) -> Self {
        self.0.enabled = enabled;
        self
    }

    pub fn build(self) -> RuleInfo {
        self.0
    }
}

impl From<RuleBuilder> for RuleInfo {
    fn from(b: RuleBuilder) -> Self {
        b.0
    }
}

impl Prefilter {
    /// Whether an event with these attributes can match. Empty lists match
    /// anything. This is the exact check the host applies.
    pub fn admits(
        &self,
        verb: &str,
        resource: Option<&str>,
        subresource: Option<&str>,
        stage: &str,
    ) -> bool {
        fn admits_one(list: &[String], value: Option<&str>) -> bool {
            list.is_empty() || value.is_some_and(|v| list.iter().any(|item| item == v))
        }
        admits_one(&self.verbs, Some(verb))
            && admits_one(&self.resources, resource)
            && admits_one(&self.subresources, subresource)
            && admits_one(&self.stages, Some(stage))
    }
}
