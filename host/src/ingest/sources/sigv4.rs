//! AWS Signature Version 4, for the CloudWatch Logs pull source.
//!
//! Written here rather than taken from `aws-sigv4`: that crate pulls the
//! AWS SDK's runtime and a second crypto stack, where signing one JSON POST
//! needs SHA-256 (`sha2`) and HMAC-SHA256 (`ring`, already rustls's
//! provider). Checked against AWS's published example (the IAM
//! `ListUsers` GET and the test suite's `get-vanilla`).

use ring::hmac;
use sha2::{Digest, Sha256};

/// Credentials to sign with. `Debug` shows only the key id.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// What is signed: one request.
pub(crate) struct Request<'a> {
    pub method: &'a str,
    /// The path, already URI-encoded (`/` for the JSON APIs).
    pub path: &'a str,
    /// The canonical query string (sorted, encoded), empty if none.
    pub query: &'a str,
    /// Headers to sign, names in lower case; `host` and `x-amz-date` among them.
    pub headers: &'a [(&'a str, &'a str)],
    pub payload: &'a [u8],
}

/// The `Authorization` header value for `req`, signed at `amz_date`
/// (`YYYYMMDDTHHMMSSZ`, the request's `X-Amz-Date`).
pub(crate) fn authorization(
    creds: &Credentials,
    region: &str,
    service: &str,
    amz_date: &str,
    req: &Request<'_>,
) -> String {
    let mut headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|(n, v)| (n.to_ascii_lowercase(), trim_value(v)))
        .collect();
    headers.sort();
    let signed: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
    let signed = signed.join(";");
    let mut canonical = format!("{}\n{}\n{}\n", req.method, req.path, req.query);
    for (n, v) in &headers {
        canonical.push_str(n);
        canonical.push(':');
        canonical.push_str(v);
        canonical.push('\n');
    }
    canonical.push('\n');
    canonical.push_str(&signed);
    canonical.push('\n');
    canonical.push_str(&hex::encode(Sha256::digest(req.payload)));

    let date = &amz_date[..amz_date.len().min(8)];
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let key = signing_key(&creds.secret_access_key, date, region, service);
    let signature = hex::encode(hmac::sign(&key, to_sign.as_bytes()).as_ref());
    format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed}, Signature={signature}",
        creds.access_key_id
    )
}

fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> hmac::Key {
    let step = |key: &[u8], data: &str| {
        hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data.as_bytes())
    };
    let k = step(format!("AWS4{secret}").as_bytes(), date);
    let k = step(k.as_ref(), region);
    let k = step(k.as_ref(), service);
    let k = step(k.as_ref(), "aws4_request");
    hmac::Key::new(hmac::HMAC_SHA256, k.as_ref())
}

/// A header value as canonical requests hold it: trimmed, inner runs of
/// spaces collapsed.
fn trim_value(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `X-Amz-Date` for a time.
pub(crate) fn amz_date(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example_creds() -> Credentials {
        Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
        }
    }

    /// The worked example of AWS's "Create a signed AWS API request"
    /// (IAM `ListUsers`, 2015-08-30T12:36:00Z).
    #[test]
    fn signs_the_documented_iam_list_users_example() {
        let auth = authorization(
            &example_creds(),
            "us-east-1",
            "iam",
            "20150830T123600Z",
            &Request {
                method: "GET",
                path: "/",
                query: "Action=ListUsers&Version=2010-05-08",
                headers: &[
                    (
                        "content-type",
                        "application/x-www-form-urlencoded; charset=utf-8",
                    ),
                    ("host", "iam.amazonaws.com"),
                    ("x-amz-date", "20150830T123600Z"),
                ],
                payload: b"",
            },
        );
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date, \
             Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
        );
    }

    /// `get-vanilla` of AWS's SigV4 test suite.
    #[test]
    fn signs_the_test_suite_get_vanilla() {
        let auth = authorization(
            &example_creds(),
            "us-east-1",
            "service",
            "20150830T123600Z",
            &Request {
                method: "GET",
                path: "/",
                query: "",
                headers: &[
                    ("Host", "example.amazonaws.com"),
                    ("X-Amz-Date", "20150830T123600Z"),
                ],
                payload: b"",
            },
        );
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let mut c = example_creds();
        c.session_token = Some("TOKEN-SECRET".into());
        let shown = format!("{c:?}");
        assert!(shown.contains("AKIDEXAMPLE"));
        assert!(!shown.contains("EXAMPLEKEY") && !shown.contains("TOKEN-SECRET"));
    }

    #[test]
    fn formats_amz_date() {
        let t = time::macros::datetime!(2015-08-30 12:36:00 UTC);
        assert_eq!(amz_date(t), "20150830T123600Z");
    }
}
