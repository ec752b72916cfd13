//! Rules about the cluster's own identities: nodes, service accounts and
//! managed control-plane users, which every other rule leaves alone.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use peregrine_sdk::state::first_seen;
use peregrine_sdk::{Alert, format_list};

use crate::Ctx;
use crate::config::any_glob;

/// Whether an IPv4 address is routable on the internet: not private,
/// shared (CGNAT), loopback, link-local, documentation, benchmarking,
/// multicast or reserved.
fn public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (18..20).contains(&b))
        || a >= 240)
}

fn public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return public_v4(v4);
    }
    let first = ip.segments()[0];
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local
        || (first & 0xffc0) == 0xfe80 // link-local
        || (first == 0x2001 && ip.segments()[1] == 0x0db8)) // documentation
}

/// `Some(true)` for a public address, `Some(false)` for any other address,
/// `None` for text that is not an address (a proxy may put anything there).
pub fn is_public(text: &str) -> Option<bool> {
    match text.trim().parse::<IpAddr>().ok()? {
        IpAddr::V4(ip) => Some(public_v4(ip)),
        IpAddr::V6(ip) => Some(public_v6(ip)),
    }
}

/// A system identity whose request came only from public addresses. Any
/// private address among the source IPs means the request passed through
/// the cluster's network (a pod on a node with a public interface too).
pub fn system_principal_public_ip(x: &Ctx) -> Option<Alert> {
    let e = x.event;
    let user = e.user_name();
    if !any_glob(&x.config.system_principals, user)
        || any_glob(&x.config.public_ip_managed_principals, user)
    {
        return None;
    }
    let classified: Vec<bool> = e
        .source_ips()
        .iter()
        .filter_map(|ip| is_public(ip))
        .collect();
    if classified.is_empty() || classified.contains(&false) {
        return None;
    }
    // Once while the identity keeps using these addresses (the marker is
    // refreshed by every use): where nodes reach a public endpoint through
    // NAT, every request of theirs would match.
    let addresses = e.source_ips().join(",");
    if !first_seen(
        &x.key(&["seen", user, &addresses]),
        x.settings.window_seconds,
        e.time_unix_nanos(),
    ) {
        return None;
    }
    Some(
        x.alert(&format!(
            "System identity {user} used from public address {}",
            format_list(e.source_ips())
        ))
        .field("threat.reason", "every source IP is public")
        .field(
            "threat.window_seconds",
            u64::from(x.settings.window_seconds),
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::is_public;

    #[test]
    fn public_addresses_are_told_from_internal_and_special_ones() {
        for ip in ["1.2.3.4", "8.8.8.8", "54.212.83.236", "2600:1f14::1"] {
            assert_eq!(is_public(ip), Some(true), "{ip}");
        }
        for ip in [
            "10.0.27.115",
            "172.20.1.15",
            "192.168.1.10",
            "127.0.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "203.0.113.42",
            "198.18.0.1",
            "0.0.0.0",
            "240.0.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "2001:db8::1",
            "::ffff:10.0.0.1",
        ] {
            assert_eq!(is_public(ip), Some(false), "{ip}");
        }
        assert_eq!(is_public("not-an-ip"), None);
        assert_eq!(is_public(""), None);
    }
}
