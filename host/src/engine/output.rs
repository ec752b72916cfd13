//! Output limits of one `evaluate` call. Output over the limits is cut, never
//! refused: the size of a rule's output usually follows the size of the event
//! (a pod with sixty 5 KB image names), so refusing it would let anyone who
//! can create such a pod silence the rule for that event, and earlier, under
//! the old consecutive-failure quarantine, for every event after it.

use peregrine_sdk as sdk;

use super::limits::SandboxLimits;

/// Set to `"true"` on every alert of a call whose output was cut.
pub const TRUNCATED_FIELD: &str = "peregrine.truncated";
/// On the alerts of a call that returned more alerts than allowed: how many
/// were left out.
pub const ALERTS_CUT_FIELD: &str = "peregrine.alerts_cut";

/// What [`cut_to_limits`] cut.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Cut {
    /// Alerts past `max_alerts_per_event`, left out.
    pub alerts: usize,
    /// Bytes of output text and field values cut off.
    pub bytes: usize,
}

impl Cut {
    pub fn is_empty(&self) -> bool {
        *self == Cut::default()
    }
}

fn fixed_bytes(a: &sdk::Alert) -> usize {
    a.rule_id.len()
        + a.fields.iter().map(|(k, _)| k.len()).sum::<usize>()
        + a.tags.iter().map(String::len).sum::<usize>()
}

fn variable_lens(a: &sdk::Alert) -> impl Iterator<Item = usize> + '_ {
    std::iter::once(a.output.len()).chain(
        a.fields
            .iter()
            .map(|(_, v)| v.as_ref().map_or(0, String::len)),
    )
}

/// The largest cap such that every string capped at it fits in `budget`
/// ("water filling"): short strings stay whole, the long ones share the rest.
fn fair_cap(mut lens: Vec<usize>, budget: usize) -> usize {
    lens.sort_unstable();
    let mut left = budget;
    let n = lens.len();
    for (i, len) in lens.iter().enumerate() {
        let rest = n - i;
        if len.saturating_mul(rest) > left {
            return left / rest;
        }
        left -= len;
    }
    usize::MAX
}

fn cut_str(s: &mut String, cap: usize) -> usize {
    if s.len() <= cap {
        return 0;
    }
    let mut end = cap;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let cut = s.len() - end;
    s.truncate(end);
    cut
}

/// Cuts a call's alerts to the sandbox limits: the first
/// `max_alerts_per_event` alerts are kept, and output text and field values
/// are shortened, the longest first, until the total fits
/// `max_output_bytes`. Every alert of a cut call is marked with
/// [`TRUNCATED_FIELD`].
pub fn cut_to_limits(alerts: &mut Vec<sdk::Alert>, limits: &SandboxLimits) -> Cut {
    let mut cut = Cut::default();
    if alerts.len() > limits.max_alerts_per_event {
        cut.alerts = alerts.len() - limits.max_alerts_per_event;
        alerts.truncate(limits.max_alerts_per_event);
    }
    let total: usize = alerts
        .iter()
        .map(|a| fixed_bytes(a) + variable_lens(a).sum::<usize>())
        .sum();
    if total > limits.max_output_bytes {
        // Names, field keys and tags come from the module's code, not from
        // the event, and stay whole; when they alone are over the limit the
        // module is at fault, and the fields past the limit go.
        let mut fixed: usize = alerts.iter().map(fixed_bytes).sum();
        for a in alerts.iter_mut().rev() {
            while fixed > limits.max_output_bytes / 2 {
                let Some((k, v)) = a.fields.pop() else { break };
                fixed -= k.len();
                cut.bytes += k.len() + v.map_or(0, |v| v.len());
            }
        }
        let lens: Vec<usize> = alerts.iter().flat_map(variable_lens).collect();
        let cap = fair_cap(lens, limits.max_output_bytes.saturating_sub(fixed));
        for a in alerts.iter_mut() {
            cut.bytes += cut_str(&mut a.output, cap);
            for (_, v) in a.fields.iter_mut() {
                if let Some(v) = v {
                    cut.bytes += cut_str(v, cap);
                }
            }
        }
    }
    if !cut.is_empty() {
        for a in alerts.iter_mut() {
            a.fields.push((TRUNCATED_FIELD.into(), Some("true".into())));
            if cut.alerts > 0 {
                a.fields
                    .push((ALERTS_CUT_FIELD.into(), Some(cut.alerts.to_string())));
            }
        }
    }
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(output: &str, fields: &[(&str, &str)]) -> sdk::Alert {
        sdk::Alert {
            rule_id: "r".into(),
            priority: None,
            output: output.into(),
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), Some(v.to_string())))
                .collect(),
            tags: vec![],
        }
    }

    fn limits(alerts: usize, bytes: usize) -> SandboxLimits {
        SandboxLimits {
            max_alerts_per_event: alerts,
            max_output_bytes: bytes,
            ..SandboxLimits::default()
        }
    }

    #[test]
    fn output_within_limits_is_untouched() {
        let mut a = vec![alert("short", &[("k", "v")])];
        assert!(cut_to_limits(&mut a, &limits(4, 100)).is_empty());
        assert_eq!(a[0].fields.len(), 1);
    }

    #[test]
    fn too_many_alerts_keep_the_first_ones_marked() {
        let mut a: Vec<_> = (0..10).map(|i| alert(&i.to_string(), &[])).collect();
        let cut = cut_to_limits(&mut a, &limits(3, 1_000));
        assert_eq!(cut.alerts, 7);
        assert_eq!(a.len(), 3);
        assert_eq!(a[2].output, "2");
        for x in &a {
            assert!(
                x.fields
                    .contains(&(TRUNCATED_FIELD.into(), Some("true".into())))
            );
            assert!(
                x.fields
                    .contains(&(ALERTS_CUT_FIELD.into(), Some("7".into())))
            );
        }
    }

    #[test]
    fn long_values_are_cut_first_and_short_ones_kept_whole() {
        let big = "é".repeat(5_000);
        let mut a = vec![
            alert(
                "Privileged pod",
                &[("ka.user.name", "alice"), ("images", &big)],
            ),
            alert(&big, &[("ns", "shop")]),
        ];
        let cut = cut_to_limits(&mut a, &limits(10, 1_000));
        assert!(cut.bytes > 0);
        let total: usize = a
            .iter()
            .map(|x| {
                fixed_bytes(x) + variable_lens(x).sum::<usize>()
                    - TRUNCATED_FIELD.len()
                    - "true".len()
            })
            .sum();
        assert!(total <= 1_000, "{total}");
        assert_eq!(a[0].output, "Privileged pod");
        assert_eq!(a[0].fields[0].1.as_deref(), Some("alice"));
        assert_eq!(a[1].fields[0].1.as_deref(), Some("shop"));
        assert!(!a[0].fields[1].1.as_ref().unwrap().is_empty());
        assert!(a[0].fields[1].1.as_ref().unwrap().len() < big.len());
    }
}
