//! Test fixture: tries to reach outside the sandbox (files, environment,
//! network, clocks) and reports what it found in one alert per event.
use peregrine_sdk::{Alert, Event, ModuleInfo, Priority, RuleModule, rule};

#[derive(Default)]
pub struct Snoop;

impl RuleModule for Snoop {
    fn metadata(&self) -> ModuleInfo {
        peregrine_sdk::module("fixture-snoop", "1")
            .rule(rule("snoop", "Snoop", Priority::Debug))
            .build()
    }

    fn evaluate(&self, _event: &Event) -> Vec<Alert> {
        let file =
            std::fs::read_to_string("/etc/hostname").is_ok() || std::fs::read_dir("/").is_ok();
        let env = std::env::vars().count();
        let args = std::env::args().count();
        let net = std::net::TcpStream::connect("127.0.0.1:1").is_ok()
            || std::net::UdpSocket::bind("127.0.0.1:0").is_ok()
            || std::net::ToSocketAddrs::to_socket_addrs("localhost:80").is_ok();
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let t0 = std::time::Instant::now();
        let mono_moves = (0..1_000_000u64).map(std::hint::black_box).sum::<u64>() > 0
            && t0.elapsed().as_nanos() > 0;
        vec![
            Alert::new("snoop")
                .output("snooped")
                .field("file", file)
                .field("env", env as u64)
                .field("args", args as u64)
                .field("net", net)
                .field("wall_clock_secs", wall)
                .field("monotonic_moves", mono_moves),
        ]
    }
}

peregrine_sdk::export_rules!(Snoop);
