//! Where a pull source's AWS credentials come from, in the SDKs' order:
//! the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! optionally `AWS_SESSION_TOKEN`), else a web-identity token
//! (`AWS_WEB_IDENTITY_TOKEN_FILE` and `AWS_ROLE_ARN`, as IRSA sets them)
//! exchanged with STS `AssumeRoleWithWebIdentity`. Assumed credentials are
//! renewed five minutes before they expire, and at once when the API says
//! they expired. Secrets never reach a log line or an error.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use super::sigv4::Credentials;
use crate::outputs::http::HttpClient;

/// Renew assumed credentials this long before they expire.
const RENEW_BEFORE: Duration = Duration::from_secs(300);
const MAX_STS_ANSWER: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub(crate) enum CredentialsError {
    #[error(
        "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN"
    )]
    Missing,
    #[error("cannot read the web identity token file {0}: {1}")]
    TokenFile(PathBuf, std::io::Error),
    #[error("STS AssumeRoleWithWebIdentity failed: {0}")]
    Sts(String),
}

enum Origin {
    Static,
    WebIdentity {
        token_file: PathBuf,
        role_arn: String,
        session_name: String,
        sts: url::Url,
    },
}

pub(crate) struct Provider {
    origin: Origin,
    current: Option<(Credentials, Option<time::OffsetDateTime>)>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Provider {
    /// Looks at the environment once; `sts` is the STS endpoint to use.
    pub(crate) fn from_env(sts: url::Url) -> Result<Self, CredentialsError> {
        if let (Some(id), Some(secret)) = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
            let creds = Credentials {
                access_key_id: id,
                secret_access_key: secret,
                session_token: env("AWS_SESSION_TOKEN"),
            };
            return Ok(Provider {
                origin: Origin::Static,
                current: Some((creds, None)),
            });
        }
        if let (Some(file), Some(role_arn)) =
            (env("AWS_WEB_IDENTITY_TOKEN_FILE"), env("AWS_ROLE_ARN"))
        {
            return Ok(Provider {
                origin: Origin::WebIdentity {
                    token_file: file.into(),
                    role_arn,
                    session_name: env("AWS_ROLE_SESSION_NAME")
                        .unwrap_or_else(|| "peregrine".to_string()),
                    sts,
                },
                current: None,
            });
        }
        Err(CredentialsError::Missing)
    }

    /// Whether renewing can help after the API refused the credentials.
    pub(crate) fn renewable(&self) -> bool {
        matches!(self.origin, Origin::WebIdentity { .. })
    }

    /// Forgets assumed credentials (the API said they expired).
    pub(crate) fn invalidate(&mut self) {
        if self.renewable() {
            self.current = None;
        }
    }

    /// Credentials valid for a while yet, assuming the role if needed.
    pub(crate) async fn get(
        &mut self,
        client: &HttpClient,
    ) -> Result<Credentials, CredentialsError> {
        let now = time::OffsetDateTime::now_utc();
        if let Some((c, expiry)) = &self.current
            && expiry.is_none_or(|e| e - RENEW_BEFORE > now)
        {
            return Ok(c.clone());
        }
        let Origin::WebIdentity {
            token_file,
            role_arn,
            session_name,
            sts,
        } = &self.origin
        else {
            return Err(CredentialsError::Missing);
        };
        // Read each time: the kubelet rotates the projected token.
        let token = std::fs::read_to_string(token_file)
            .map_err(|e| CredentialsError::TokenFile(token_file.clone(), e))?;
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("Action", "AssumeRoleWithWebIdentity")
            .append_pair("Version", "2011-06-15")
            .append_pair("RoleArn", role_arn)
            .append_pair("RoleSessionName", session_name)
            .append_pair("WebIdentityToken", token.trim())
            .finish();
        let headers = [
            (
                "content-type",
                "application/x-www-form-urlencoded; charset=utf-8".to_string(),
            ),
            ("accept", "application/json".to_string()),
        ];
        let (status, body) = client
            .post(sts, &headers, form.into_bytes(), MAX_STS_ANSWER)
            .await
            .map_err(CredentialsError::Sts)?;
        if status != 200 {
            return Err(CredentialsError::Sts(format!(
                "HTTP {status}: {}",
                error_code(&body)
            )));
        }
        let (creds, expiry) = parse_assumed(&body).map_err(CredentialsError::Sts)?;
        tracing::info!(access_key_id = %creds.access_key_id, "assumed {role_arn}");
        self.current = Some((creds.clone(), expiry));
        Ok(creds)
    }
}

/// The error code of an STS answer (JSON or XML), never its whole body.
fn error_code(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    if let Ok(v) = serde_json::from_str::<Value>(&text)
        && let Some(code) = v.pointer("/Error/Code").and_then(Value::as_str)
    {
        return crate::ingest::envelope::shown(code);
    }
    match (text.find("<Code>"), text.find("</Code>")) {
        (Some(a), Some(b)) if a + 6 <= b => crate::ingest::envelope::shown(&text[a + 6..b]),
        _ => "no error code".to_string(),
    }
}

/// The credentials of an `AssumeRoleWithWebIdentity` JSON answer.
fn parse_assumed(body: &[u8]) -> Result<(Credentials, Option<time::OffsetDateTime>), String> {
    let v: Value =
        serde_json::from_slice(body).map_err(|_| "the answer is not JSON".to_string())?;
    let c = v
        .pointer("/AssumeRoleWithWebIdentityResponse/AssumeRoleWithWebIdentityResult/Credentials")
        .ok_or("the answer holds no Credentials")?;
    let field = |k: &str| {
        c.get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .ok_or(format!("the answer's Credentials have no {k}"))
    };
    let expiry = match c.get("Expiration") {
        Some(Value::Number(n)) => n
            .as_f64()
            .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s as i64).ok()),
        Some(Value::String(s)) => {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
        }
        _ => None,
    };
    Ok((
        Credentials {
            access_key_id: field("AccessKeyId")?,
            secret_access_key: field("SecretAccessKey")?,
            session_token: Some(field("SessionToken")?),
        },
        // Without a readable expiry, renew within the hour STS grants by default.
        Some(expiry.unwrap_or_else(|| time::OffsetDateTime::now_utc() + Duration::from_secs(3600))),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_an_assume_role_answer() {
        let body = br#"{"AssumeRoleWithWebIdentityResponse":{"AssumeRoleWithWebIdentityResult":{"Credentials":{"AccessKeyId":"ASIAEXAMPLE","SecretAccessKey":"s3cr3t","SessionToken":"tok","Expiration":1764800000.0}}}}"#;
        let (c, e) = parse_assumed(body).unwrap();
        assert_eq!(c.access_key_id, "ASIAEXAMPLE");
        assert_eq!(c.session_token.as_deref(), Some("tok"));
        assert_eq!(e.unwrap().unix_timestamp(), 1_764_800_000);
        assert!(parse_assumed(b"<xml/>").is_err());
        assert!(parse_assumed(br#"{"AssumeRoleWithWebIdentityResponse":{}}"#).is_err());
    }

    #[test]
    fn error_codes_not_bodies() {
        assert_eq!(
            error_code(br#"{"Error":{"Code":"InvalidIdentityToken","Message":"x"}}"#),
            "InvalidIdentityToken"
        );
        assert_eq!(
            error_code(b"<ErrorResponse><Error><Code>AccessDenied</Code></Error></ErrorResponse>"),
            "AccessDenied"
        );
        assert_eq!(error_code(b"garbage"), "no error code");
    }
}
