//! `type = "slack"`: a Slack incoming webhook, one message per alert, laid
//! out with blocks: a header with the priority and rule, the alert's text,
//! the facts as fields, and where it came from as context. `text` carries a
//! one-line summary for notifications and clients without blocks.

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::BuildError;
use super::delivery::{Deliver, SendFailure};
use super::http::{HttpTarget, HttpTargetConfig};
use super::webhook::post_each;
use crate::alert::{Alert, Priority, RULE_ID_FIELD};

/// `url` is the incoming webhook URL (`https://hooks.slack.com/services/...`).
/// It is a secret: it is never logged.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SlackConfig {
    #[serde(flatten)]
    pub target: HttpTargetConfig,
    /// Sender name shown instead of the app's (legacy webhooks only).
    #[serde(default)]
    pub username: Option<String>,
    /// Sender icon, e.g. `:eagle:` (legacy webhooks only).
    #[serde(default)]
    pub icon_emoji: Option<String>,
}

impl SlackConfig {
    pub(crate) fn validate(&self) -> Result<(), BuildError> {
        self.target.parsed_url().map(|_| ())
    }

    pub fn build(&self) -> Result<SlackOutput, BuildError> {
        Ok(SlackOutput {
            target: HttpTarget {
                client: self.target.client()?,
                url: self.target.parsed_url()?,
                headers: Default::default(),
            },
            username: self.username.clone(),
            icon_emoji: self.icon_emoji.clone(),
        })
    }
}

pub struct SlackOutput {
    target: HttpTarget,
    username: Option<String>,
    icon_emoji: Option<String>,
}

// Slack's limits on block text; longer text makes Slack refuse the message.
const HEADER_MAX: usize = 150;
const SECTION_MAX: usize = 3000;
const FIELD_MAX: usize = 2000;
const FIELDS_MAX: usize = 10;

fn emoji(p: Priority) -> &'static str {
    match p {
        Priority::Emergency | Priority::Alert | Priority::Critical => ":red_circle:",
        Priority::Error => ":large_orange_circle:",
        Priority::Warning => ":large_yellow_circle:",
        Priority::Notice => ":large_blue_circle:",
        Priority::Informational | Priority::Debug => ":white_circle:",
    }
}

/// Slack's mrkdwn treats `&`, `<` and `>` as control characters.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// At most `max` characters, with an ellipsis when cut.
fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
    t.push('…');
    t
}

impl SlackOutput {
    pub fn message(&self, a: &Alert) -> serde_json::Value {
        let mut fields = vec![
            ("Priority", a.priority.as_str().to_string()),
            ("Tenant", a.tenant.to_string()),
            ("Rule ID", a.rule_id.clone()),
            ("Module", a.module.clone()),
        ];
        let extra: Vec<(&str, String)> = a
            .fields
            .iter()
            // The rule id has its own field above.
            .filter(|(k, _)| k != RULE_ID_FIELD)
            .filter_map(|(k, v)| {
                v.as_ref()
                    .filter(|v| !v.is_empty())
                    .map(|v| (k.as_str(), v.clone()))
            })
            .take(FIELDS_MAX - fields.len())
            .collect();
        fields.extend(extra);
        let fields: Vec<serde_json::Value> = fields
            .into_iter()
            .map(|(k, v)| {
                json!({
                    "type": "mrkdwn",
                    "text": truncate(&format!("*{}*\n{}", escape(k), escape(&v)), FIELD_MAX),
                })
            })
            .collect();
        let mut context = format!(
            "{} · audit ID {} · host {}",
            a.time_rfc3339(),
            a.audit_id,
            a.hostname
        );
        if !a.tags.is_empty() {
            context.push_str(&format!(" · tags: {}", a.tags.join(", ")));
        }
        let mut msg = json!({
            "text": truncate(&format!("[{}] {}: {}", a.priority, a.rule, a.output), SECTION_MAX),
            "blocks": [
                {
                    "type": "header",
                    "text": {
                        "type": "plain_text",
                        "text": truncate(&format!("{} {}: {}", emoji(a.priority), a.priority, a.rule), HEADER_MAX),
                        "emoji": true,
                    },
                },
                {
                    "type": "section",
                    "text": { "type": "mrkdwn", "text": truncate(&escape(&a.output), SECTION_MAX) },
                },
                { "type": "section", "fields": fields },
                {
                    "type": "context",
                    "elements": [ { "type": "mrkdwn", "text": truncate(&escape(&context), SECTION_MAX) } ],
                },
            ],
        });
        if let Some(u) = &self.username {
            msg["username"] = json!(u);
        }
        if let Some(i) = &self.icon_emoji {
            msg["icon_emoji"] = json!(i);
        }
        msg
    }
}

impl Deliver for SlackOutput {
    async fn send(&mut self, alerts: &[Alert]) -> Result<(), SendFailure> {
        let this = &*self;
        post_each(&this.target, alerts, |a| {
            this.message(a).to_string().into_bytes()
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_within_slack_limits() {
        assert_eq!(escape("a<b>&c"), "a&lt;b&gt;&amp;c");
        assert_eq!(truncate("héllo", 3), "hé…");
        assert_eq!(truncate("abc", 3), "abc");
    }
}
