//! Requests with curl, as an operator or an apiserver sends them, and
//! ports for listeners that come and go.

use std::process::Command;

/// A port for a listener that is down at first, or stops and comes back,
/// on the address a configuration names.
///
/// It is taken below the kernel's ephemeral range (32768-60999 on Linux):
/// a port from that range, freed while the listener is down, can be handed
/// to any other test's `bind(0)` or outgoing connection in the meantime.
/// Below it only an explicit bind takes a port, and each call here moves on
/// to the next candidate (offset by the process id, so test binaries run
/// one after another start in different places).
pub fn reserve_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7919) % SPAN;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + (start + n) % SPAN) as u16;
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port));
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port));
        if tcp.is_ok() && udp.is_ok() {
            return port;
        }
    }
    panic!("no free port between {LOW} and {}", LOW + SPAN)
}

/// An HTTP answer to a curl request.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl Response {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {}", self.body))
    }

    /// The status and the body as JSON (null if it is not JSON).
    pub fn status_json(&self) -> (u16, serde_json::Value) {
        (
            self.status,
            serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null),
        )
    }
}

/// A request with curl: method, URL, headers, body bytes (from a file, so
/// binary bodies and bodies of megabytes pass unchanged).
pub fn request(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Response {
    let dir = tempfile::tempdir().unwrap();
    let head = dir.path().join("head");
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-X", method, "-o", "-", "-D"])
        .arg(&head)
        .args(["-w", "\n%{http_code}"]);
    for (k, v) in headers {
        cmd.arg("-H").arg(format!("{k}: {v}"));
    }
    if let Some(b) = body {
        let file = dir.path().join("body");
        std::fs::write(&file, b).unwrap();
        cmd.arg("--data-binary").arg(format!("@{}", file.display()));
    }
    let out = cmd.arg(url).output().expect("curl is installed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    Response {
        status: code.trim().parse().unwrap_or(0),
        headers: std::fs::read_to_string(&head).unwrap_or_default(),
        body: body.to_string(),
    }
}

/// A POST of a JSON body with extra headers.
pub fn post_json(url: &str, headers: &[(&str, &str)], body: &str) -> Response {
    let mut h = vec![("Content-Type", "application/json")];
    h.extend_from_slice(headers);
    request("POST", url, &h, Some(body.as_bytes()))
}

/// (status, JSON) of a GET, with a bearer token if given.
pub fn get_json(url: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    request("GET", url, &headers, None).status_json()
}

/// (status, JSON) of a POST of a JSON body, with a bearer token if given.
pub fn post(url: &str, token: Option<&str>, body: &str) -> (u16, serde_json::Value) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    post_json(url, &headers, body).status_json()
}
