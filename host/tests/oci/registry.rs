//! A real registry for the tests: Debian's `docker-registry` (the CNCF
//! distribution registry) on 127.0.0.1, with a configuration written here,
//! optionally with basic auth (htpasswd, bcrypt) and TLS.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

// A registry may stop and come back on its port: one no other test's
// `bind(0)` takes while it is down.
use crate::support::reserve_port;

pub const BINARY: &str = "/usr/bin/docker-registry";

#[derive(Default)]
pub struct Options {
    /// Users and passwords for basic auth.
    pub users: Vec<(&'static str, &'static str)>,
    /// Certificate and key PEM files: serve HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
}

pub struct Registry {
    child: Option<Child>,
    pub port: u16,
    pub root: tempfile::TempDir,
    config: PathBuf,
}

impl Registry {
    pub fn start(options: Options) -> Registry {
        assert!(
            Path::new(BINARY).exists(),
            "{BINARY} is missing: scripts/install-test-deps.sh installs Debian's docker-registry"
        );
        let root = tempfile::tempdir().unwrap();
        let port = reserve_port();
        let mut yaml = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: peregrine-test\n",
            root.path().join("storage").display()
        );
        if let Some((cert, key)) = &options.tls {
            yaml.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ));
        }
        if !options.users.is_empty() {
            let htpasswd = root.path().join("htpasswd");
            let mut lines = String::new();
            for (user, pass) in &options.users {
                let out = Command::new("htpasswd")
                    .args(["-Bbn", user, pass])
                    .output()
                    .expect("htpasswd runs (Debian's apache2-utils)");
                assert!(out.status.success(), "htpasswd failed");
                lines.push_str(String::from_utf8(out.stdout).unwrap().trim());
                lines.push('\n');
            }
            std::fs::write(&htpasswd, lines).unwrap();
            yaml.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: peregrine-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let config = root.path().join("config.yml");
        std::fs::write(&config, yaml).unwrap();
        let mut registry = Registry {
            child: None,
            port,
            root,
            config,
        };
        registry.resume();
        registry
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the registry process (again) on its port and storage.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "the registry is running");
        let log = std::fs::File::create(self.root.path().join("registry.log")).unwrap();
        let child = Command::new(BINARY)
            .arg("serve")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("docker-registry starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("docker-registry exited with {status}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not listen:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.path().join("registry.log")).unwrap_or_default()
    }

    /// The registry's own files under its storage root.
    pub fn storage(&self, rel: &str) -> PathBuf {
        self.root
            .path()
            .join("storage/docker/registry/v2")
            .join(rel)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}
