//! Connection deadlines and limits, and what the ingest endpoints do with
//! hostile bodies, as the real binary applies them: idle, partial-header and
//! partial-body connections are closed once their deadline passes (small
//! deadlines configured; the tests wait for the close, they do not time
//! it), and so is one whose client stopped reading; a server holding more
//! connections than its limit still answers `/healthz` (a probe evicts a
//! silent connection from the reserve), and without a reserve refuses the
//! newcomer; a declared length over the limit gets 413 before any body;
//! gzip is taken within the body limit, a gzip bomb and an unknown encoding
//! are refused; the `rejected` list is capped; events refused with 429 are
//! counted apart; an oversize event is logged, rate-limited.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::support::*;

/// A generous bound on how long a test waits for the server to close a
/// connection: reaching it means the deadline did not work.
const CLOSE_WAIT: Duration = Duration::from_secs(120);

fn server_with(work: &std::path::Path, server_keys: &str, rest: &str) -> Running {
    let rules = rules_dir_in(work, &[fixture_module("fixture_echo")]);
    let config = work.join("peregrine.toml");
    let text = base_config(&rules, None).replace(
        "[server.journal]",
        &format!("{server_keys}\n[server.journal]"),
    ) + rest;
    std::fs::write(&config, text).unwrap();
    start(&config, &["--no-watch"])
}

fn connect(srv: &Running) -> TcpStream {
    let s = TcpStream::connect(&srv.addr).unwrap();
    s.set_read_timeout(Some(CLOSE_WAIT)).unwrap();
    s
}

/// Everything the server sends until it closes the connection; panics if
/// it keeps it open for `CLOSE_WAIT`.
fn read_until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return out,
            Err(e) => panic!(
                "the connection is still open after {CLOSE_WAIT:?} ({e}); read so far: {}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
}

/// One HTTP/1.1 answer on a kept-alive connection: (status, body).
fn read_answer(s: &mut TcpStream) -> (u16, String) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "closed before an answer");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let status = head[9..12].parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    s.read_exact(&mut body).unwrap();
    (status, String::from_utf8_lossy(&body).to_string())
}

fn get(s: &mut TcpStream, path: &str) -> (u16, String) {
    write!(s, "GET {path} HTTP/1.1\r\nHost: peregrine\r\n\r\n").unwrap();
    read_answer(s)
}

#[test]
fn idle_partial_header_and_partial_body_connections_are_closed_after_their_deadlines() {
    let work = tempfile::tempdir().unwrap();
    let srv = server_with(
        work.path(),
        "header_read_timeout_secs = 1\nbody_read_timeout_secs = 1\nidle_timeout_secs = 2\nwrite_timeout_secs = 5",
        "",
    );

    // A connection that never sends a byte (closed when idle).
    let mut silent = connect(&srv);
    // One kept alive after an answer (closed waiting for the next head).
    let mut kept = connect(&srv);
    assert_eq!(get(&mut kept, "/healthz").0, 200);
    // Headers begun, never finished.
    let mut slow_head = connect(&srv);
    slow_head
        .write_all(b"POST /k8s-audit HTTP/1.1\r\nHost: peregrine\r\nContent-")
        .unwrap();
    // A body declared and never sent in full.
    let mut slow_body = connect(&srv);
    slow_body
        .write_all(
            b"POST /k8s-audit HTTP/1.1\r\nHost: peregrine\r\nContent-Type: application/json\r\n\
              Content-Length: 1000\r\n\r\n{\"kind\":",
        )
        .unwrap();
    // HTTP/2 by prior knowledge: the preface and empty SETTINGS, then nothing.
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";
    let mut h2 = connect(&srv);
    h2.write_all(PREFACE).unwrap();
    // HTTP/2 with a request's header block begun (HEADERS without
    // END_HEADERS: GET, /, http) and its CONTINUATION never sent.
    let mut h2_head = connect(&srv);
    h2_head.write_all(PREFACE).unwrap();
    h2_head
        .write_all(b"\0\0\x03\x01\x01\0\0\0\x01\x82\x84\x86")
        .unwrap();

    assert!(read_until_closed(&mut silent).is_empty());
    assert!(read_until_closed(&mut kept).is_empty());
    read_until_closed(&mut slow_head);
    let answer = String::from_utf8_lossy(&read_until_closed(&mut slow_body)).to_string();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("not received within 1 s"), "{answer}");
    // The HTTP/2 connections are told to go away (a GOAWAY frame), then
    // closed.
    for c in [&mut h2, &mut h2_head] {
        let frames = read_until_closed(c);
        let mut at = 0;
        let mut types = Vec::new();
        while at + 9 <= frames.len() {
            let len = u32::from_be_bytes([0, frames[at], frames[at + 1], frames[at + 2]]) as usize;
            types.push(frames[at + 3]);
            at += 9 + len;
        }
        assert!(types.contains(&7), "no GOAWAY among frames {types:?}");
    }

    let m = srv.metrics();
    // The silent and the HTTP/2 ones were idle; the kept-alive one and the
    // unfinished head ran out of time for a head.
    assert!(
        metric_sum(
            &m,
            "peregrine_connections_closed_total",
            &[("reason", "idle")]
        ) >= 2.0,
        "{m}"
    );
    assert!(
        metric_sum(
            &m,
            "peregrine_connections_closed_total",
            &[("reason", "header_timeout")]
        ) >= 2.0,
        "{m}"
    );
    assert_eq!(
        metric_sum(
            &m,
            "peregrine_requests_rejected_total",
            &[("reason", "body_timeout")]
        ),
        1.0,
        "{m}"
    );
}

#[test]
fn a_client_that_stops_reading_is_dropped_at_the_write_timeout() {
    let work = tempfile::tempdir().unwrap();
    let srv = server_with(work.path(), "write_timeout_secs = 1", "");
    // Thousands of pipelined requests for the 10 KB UI page, and none of
    // the answers read: tens of megabytes, far more than the sockets
    // buffer, so the server's writes stall.
    let mut s = connect(&srv);
    let mut writer = s.try_clone().unwrap();
    // From a thread: should the server stop reading the requests too, the
    // write blocks until the drop, and then fails, which is fine.
    let writing = std::thread::spawn(move || {
        let requests = "GET / HTTP/1.1\r\nHost: peregrine\r\n\r\n".repeat(5000);
        let _ = writer.write_all(requests.as_bytes());
    });
    let deadline = Instant::now() + CLOSE_WAIT;
    while metric_sum(
        &srv.metrics(),
        "peregrine_connections_closed_total",
        &[("reason", "write_timeout")],
    ) < 1.0
    {
        assert!(
            Instant::now() < deadline,
            "the stalled connection was not dropped"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The connection ends (after what was buffered, or with a reset that
    // discards it), short of the answers asked for.
    let answers = read_until_closed(&mut s);
    assert!(answers.len() < 5000 * 10_000, "every answer was written");
    writing.join().unwrap();
}

#[test]
fn holding_more_connections_than_the_limit_keeps_healthz_answering() {
    let work = tempfile::tempdir().unwrap();
    // Deadlines long enough that the held connections stay for the test.
    let srv = server_with(
        work.path(),
        "max_connections = 8\nreserved_connections = 2\nheader_read_timeout_secs = 600\nidle_timeout_secs = 600",
        "",
    );
    // Six connections fill the general pool; each is answered, so each is
    // taken, and kept alive.
    let mut held: Vec<TcpStream> = (0..6).map(|_| connect(&srv)).collect();
    for s in &mut held {
        assert_eq!(get(s, "/healthz").0, 200);
    }

    // With the reserve held by connections that send nothing, a probe
    // still gets its answer: it evicts the oldest of them. (The kernel hands
    // connections over in order, so both holders are taken before it.)
    let mut reserve_holders: Vec<TcpStream> = (0..2).map(|_| connect(&srv)).collect();
    let mut probe = connect(&srv);
    let (code, body) = get(&mut probe, "/healthz");
    assert_eq!(code, 200, "{body}");
    assert!(read_until_closed(&mut probe).is_empty());
    assert!(read_until_closed(&mut reserve_holders[0]).is_empty());
    drop(reserve_holders);

    // From the reserve: /healthz and /metrics answer, once per connection;
    // anything else gets 503. (Each connection is closed before the next
    // opens, so the two reserve slots suffice.)
    for _ in 0..3 {
        let mut s = connect(&srv);
        let (code, body) = get(&mut s, "/healthz");
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("\"status\""), "{body}");
        assert!(read_until_closed(&mut s).is_empty());
    }
    let mut s = connect(&srv);
    let (code, body) = get(&mut s, "/api/v1/rules");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("connection limit"), "{body}");
    read_until_closed(&mut s);
    let mut s = connect(&srv);
    let (code, m) = get(&mut s, "/metrics");
    assert_eq!(code, 200);
    read_until_closed(&mut s);
    assert_eq!(
        metric_sum(&m, "peregrine_connections_open", &[("pool", "general")]),
        6.0,
        "{m}"
    );
    assert!(
        metric_sum(&m, "peregrine_connections_evicted_total", &[]) >= 1.0,
        "{m}"
    );
    // The held connections were never disturbed.
    for s in &mut held {
        assert_eq!(get(s, "/healthz").0, 200);
    }
}

#[test]
fn without_a_reserve_a_connection_beyond_the_limit_is_closed_unread() {
    let work = tempfile::tempdir().unwrap();
    let srv = server_with(
        work.path(),
        "max_connections = 2\nreserved_connections = 0\nheader_read_timeout_secs = 600\nidle_timeout_secs = 600",
        "",
    );
    let mut held: Vec<TcpStream> = (0..2).map(|_| connect(&srv)).collect();
    for s in &mut held {
        assert_eq!(get(s, "/healthz").0, 200);
    }
    let mut refused = connect(&srv);
    let _ = refused.write_all(b"GET /healthz HTTP/1.1\r\nHost: peregrine\r\n\r\n");
    assert!(read_until_closed(&mut refused).is_empty());
    // Once a held connection leaves (and the server has seen it go), there
    // is room again, and the refusal was counted.
    held.pop();
    let deadline = Instant::now() + CLOSE_WAIT;
    let m = loop {
        let mut s = connect(&srv);
        if s.write_all(b"GET /metrics HTTP/1.1\r\nHost: peregrine\r\nConnection: close\r\n\r\n")
            .is_ok()
        {
            let answer = String::from_utf8_lossy(&read_until_closed(&mut s)).to_string();
            if !answer.is_empty() {
                break answer;
            }
        }
        assert!(Instant::now() < deadline, "no room came back");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(m.starts_with("HTTP/1.1 200"), "{m}");
    assert!(
        metric_sum(&m, "peregrine_connections_refused_total", &[]) >= 1.0,
        "{m}"
    );
}

#[test]
fn a_declared_length_over_the_limit_gets_413_before_any_body() {
    let work = tempfile::tempdir().unwrap();
    let srv = server_with(work.path(), "", "");
    let mut s = connect(&srv);
    s.write_all(
        b"POST /k8s-audit HTTP/1.1\r\nHost: peregrine\r\nContent-Type: application/json\r\n\
          Content-Length: 10000000000\r\n\r\n",
    )
    .unwrap();
    let (code, body) = read_answer(&mut s);
    assert_eq!(code, 413, "{body}");
    assert!(body.contains("10000000000"), "{body}");
    // Nothing of the body was read, so the connection is not reused.
    read_until_closed(&mut s);
}

/// (status, body) of a POST of raw bytes in a given encoding: the body as
/// JSON, or as a string if it is not JSON.
fn post_encoded(url: &str, encoding: &str, body: &[u8]) -> (u16, serde_json::Value) {
    let headers = [
        ("Content-Type", "application/json"),
        ("Content-Encoding", encoding),
    ];
    let a = request("POST", url, &headers, Some(body));
    let json = serde_json::from_str(&a.body).unwrap_or(serde_json::Value::String(a.body));
    (a.status, json)
}

#[test]
fn gzip_bodies_encodings_capped_rejections_refused_events_and_oversize_logs() {
    let work = tempfile::tempdir().unwrap();
    let srv = server_with(
        work.path(),
        "max_body_bytes = 1048576\nmax_event_bytes = 2000",
        "[tenants.default]\nevents_per_second = 5\n",
    );
    let url = srv.url("/k8s-audit");

    // gzip is taken, on the webhook as on the push endpoints.
    let list = event_list(&[
        event("gz-1", "get", "pods", "a"),
        event("gz-2", "get", "pods", "a"),
    ]);
    let (code, body) = post_encoded(&url, "gzip", &gzip(list.as_bytes()));
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["accepted"], 2);
    // A gzip bomb: 64 KiB that inflates past the 1 MiB body limit.
    let bomb = gzip(&vec![b' '; 64 << 20]);
    assert!(bomb.len() < 1 << 20);
    let (code, body) = post_encoded(&url, "gzip", &bomb);
    assert_eq!(code, 413, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("expands past"),
        "{body}"
    );
    let (code, body) = post_encoded(&srv.url("/ingest/pubsub"), "gzip", &bomb);
    assert_eq!(code, 413, "{body}");
    // Any other encoding: 415, saying what is supported.
    let (code, body) = post_encoded(&url, "br", list.as_bytes());
    assert_eq!(code, 415, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("`br` is not supported") && error.contains("gzip"),
        "{body}"
    );

    // 250 bad items and a good one: the first 100 reasons and the count.
    let mut items: Vec<serde_json::Value> = (0..250)
        .map(|_| serde_json::json!({"kind": "Event", "auditID": 7}))
        .collect();
    items.push(event("good-1", "get", "pods", "a"));
    let (code, body) = post(&url, None, &event_list(&items));
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["accepted"], 1);
    assert_eq!(body["rejected"].as_array().unwrap().len(), 100);
    assert_eq!(body["rejected"][0]["at"], "item 0");
    assert_eq!(body["rejected_count"], 250);

    // More events than the tenant's quota holds: refused with 429, counted
    // apart, not as received.
    let many: Vec<_> = (0..50)
        .map(|i| event(&format!("rate-{i}"), "get", "pods", "a"))
        .collect();
    let (code, body) = post(&url, None, &event_list(&many));
    assert_eq!(code, 429, "{body}");
    let m = srv.metrics();
    assert_eq!(
        metric_sum(
            &m,
            "peregrine_events_refused_total",
            &[("reason", "tenant_rate")]
        ),
        50.0,
        "{m}"
    );
    assert_eq!(
        metric_sum(
            &m,
            "peregrine_events_received_total",
            &[("tenant", "default")]
        ),
        3.0,
        "{m}"
    );
    for reason in ["too_large", "content_encoding"] {
        assert!(
            metric_sum(
                &m,
                "peregrine_requests_rejected_total",
                &[("reason", reason)]
            ) >= 1.0,
            "{reason}: {m}"
        );
    }

    // Events over the per-event limit: logged, one line a second at most,
    // the next line saying how many were left out.
    let big = |id: &str| {
        let mut e = event(id, "get", "pods", "a");
        e["userAgent"] = serde_json::json!("x".repeat(3000));
        e
    };
    let oversize: Vec<_> = (0..40).map(|i| big(&format!("big-{i}"))).collect();
    let (code, body) = post(&url, None, &event_list(&oversize));
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["rejected_count"], 40);
    let lines = |srv: &Running| -> Vec<String> {
        srv.stderr
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("audit event rejected"))
            .cloned()
            .collect()
    };
    // The log arrives through a pipe: wait for it.
    let deadline = Instant::now() + CLOSE_WAIT;
    while lines(&srv).is_empty() {
        assert!(Instant::now() < deadline, "no log line:\n{}", srv.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
    let first = lines(&srv);
    assert!(first.len() < 40, "not rate-limited: {first:#?}");
    assert!(
        first[0].contains("over the per-event limit of 2000"),
        "{first:?}"
    );
    // Once the second has passed, the next oversize event is logged again,
    // with the count of those left out.
    let deadline = Instant::now() + CLOSE_WAIT;
    let next = loop {
        let (code, _) = post(&url, None, &big("big-again").to_string());
        assert_eq!(code, 200);
        let l = lines(&srv);
        if l.len() > first.len() {
            break l[first.len()].clone();
        }
        assert!(Instant::now() < deadline, "no second log line");
        std::thread::sleep(Duration::from_millis(50));
    };
    let suppressed: u64 = next
        .split("suppressed=")
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no suppressed count: {next}"));
    assert!(suppressed >= 40 - first.len() as u64, "{next}");
}
