//! The real `peregrine` binary in a child process: `peregrine serve` on an
//! ephemeral port with its alerts and logs collected, or any command run to
//! its end.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{LONG_WAIT, cache_dir, request};

/// Where Cargo built the `peregrine` binary for the host's tests.
pub fn peregrine_bin() -> &'static str {
    // Read at compile time, and set only for the host's tests: in the
    // `peregrine-tests` library, which never starts the binary, it is absent.
    match option_env!("CARGO_BIN_EXE_peregrine") {
        Some(path) => path,
        None => panic!("only the host's test binary is told where the peregrine binary is"),
    }
}

/// `peregrine <args>` as a user runs it, with the shared compile cache and
/// warnings only.
pub fn peregrine(args: &[&str]) -> Command {
    let mut c = Command::new(peregrine_bin());
    c.args(args)
        .env("PEREGRINE_CACHE_DIR", cache_dir())
        .env("PEREGRINE_LOG", "warn");
    c
}

/// The `[server]`, `[engine]`, `[rules]` and `[store]` of a test server, for
/// the rules directory `rules`; a test appends its own sections.
///
/// With `state`, the ingest journal and the alert store live there and one
/// worker evaluates: for a server that restarts on the same state. Without,
/// neither is kept (tests run in parallel, and one journal file admits one
/// process) and two workers evaluate.
pub fn base_config(rules: &Path, state: Option<&Path>) -> String {
    match state {
        Some(work) => format!(
            "[server]\nlisten = \"127.0.0.1:0\"\njournal = {{ dir = \"{journal}\" }}\n\n\
             [engine]\nworkers = 1\ncache_dir = \"{cache}\"\n\n\
             [rules]\ndirs = [\"{rules}\"]\n\n[store]\npath = \"{store}\"\n\n",
            journal = work.join("journal").display(),
            cache = cache_dir().display(),
            rules = rules.display(),
            store = work.join("alerts.sqlite").display(),
        ),
        None => format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[server.journal]\nenabled = false\n\
             [engine]\nworkers = 2\ncache_dir = \"{cache}\"\n\
             [rules]\ndirs = [\"{rules}\"]\n[store]\nenabled = false\n",
            cache = cache_dir().display(),
            rules = rules.display(),
        ),
    }
}

/// `peregrine serve -c <config> <extra>`, logging at info, without the
/// runner's AWS credentials: the credential chain reads these first, and
/// the runner's own must not stand in for the ones a test gives.
fn serve_command(config: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(peregrine_bin());
    c.args(["serve", "-c"])
        .arg(config)
        .args(extra)
        .env("PEREGRINE_LOG", "info");
    for var in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
        "AWS_ROLE_SESSION_NAME",
    ] {
        c.env_remove(var);
    }
    c
}

/// `peregrine serve` run to its end (for configurations it must refuse).
pub fn run_to_end(config: &Path, extra: &[&str]) -> std::process::Output {
    serve_command(config, extra).output().unwrap()
}

/// A `peregrine serve` in a child process, its stdout (alerts) and stderr
/// (logs) collected line by line.
pub struct Running {
    pub child: Child,
    pub addr: String,
    pub stdout: Arc<Mutex<Vec<String>>>,
    pub stderr: Arc<Mutex<Vec<String>>>,
    /// The threads reading stdout and stderr; they end once the pipes close.
    readers: Vec<std::thread::JoinHandle<()>>,
}

/// Whatever way a test ends, a failed assertion included, the server it
/// started does not outlive it.
impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `peregrine serve -c <config> <extra>` and waits for its address.
pub fn start(config: &Path, extra: &[&str]) -> Running {
    start_with_env(config, extra, &[])
}

/// [`start`] with extra environment variables for the child (credentials
/// of a source).
pub fn start_with_env(config: &Path, extra: &[&str], env: &[(&str, &str)]) -> Running {
    let mut child = serve_command(config, extra)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    let logs = Arc::new(Mutex::new(Vec::new()));
    let log_lines = logs.clone();
    let err_reader = std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if let Some(addr) = line.split("listening on http://").nth(1) {
                let _ = tx.send(addr.split_whitespace().next().unwrap().to_string());
            }
            log_lines.lock().unwrap().push(line);
        }
    });
    let stdout = Arc::new(Mutex::new(Vec::new()));
    let lines = stdout.clone();
    let out = BufReader::new(child.stdout.take().unwrap());
    let out_reader = std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            lines.lock().unwrap().push(line);
        }
    });
    // From here on the server is killed on every path out of the test.
    let mut running = Running {
        child,
        addr: String::new(),
        stdout,
        stderr: logs,
        readers: vec![err_reader, out_reader],
    };
    // The reader's sender is dropped when stderr closes: the process ended
    // before it listened.
    match rx.recv_timeout(LONG_WAIT) {
        Ok(a) => running.addr = a,
        Err(_) => {
            let status = running.child.try_wait().ok().flatten();
            let _ = running.child.kill();
            let _ = running.child.wait();
            running.drain_output();
            panic!(
                "peregrine serve did not start (exit: {status:?}):\n{}",
                running.logs()
            )
        }
    }
    running
}

impl Running {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The alerts printed so far, parsed.
    pub fn alerts(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits until `pred` holds for the alerts printed so far.
    pub fn wait_alerts(
        &self,
        what: &str,
        pred: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + LONG_WAIT;
        loop {
            let alerts = self.alerts();
            if pred(&alerts) {
                return alerts;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; alerts so far:\n{}\nlogs:\n{}",
                self.stdout.lock().unwrap().join("\n"),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Everything it logged so far.
    pub fn logs(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Its `/metrics` text.
    pub fn metrics(&self) -> String {
        let a = request("GET", &self.url("/metrics"), &[], None);
        assert_eq!(a.status, 200, "/metrics: {}", a.body);
        a.body
    }

    /// Its resident set size in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// SIGKILL: no drain, no flush. Returns every line it printed.
    pub fn kill(mut self) -> Vec<String> {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.drain_output()
    }

    /// SIGTERM, then waits for a clean exit. Returns every line it printed.
    pub fn stop(mut self) -> Vec<String> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "peregrine exited with {status}");
        self.drain_output()
    }

    /// Once the process is gone: waits for the readers to reach the end of
    /// its pipes, so no line it printed is missed.
    fn drain_output(&mut self) -> Vec<String> {
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        self.stdout.lock().unwrap().clone()
    }
}
