//! State that outlives a call: sliding-window counters, distinct counts and
//! first-seen sets, kept by the host per tenant and module, in event time.
//!
//! Inside the sandbox these functions call the host. Natively (in `cargo
//! test`) they use a thread-local [`StateTable`], the same structure the host
//! uses, so a stateful rule behaves the same in both; [`reset`] clears it.

use std::collections::{HashMap, VecDeque};

const NANOS: i64 = 1_000_000_000;

/// Adds `delta` to the counter `key` and returns its total over the last
/// `window_seconds` of event time ending at `now_unix_nanos`.
pub fn counter_add(key: &str, delta: u32, window_seconds: u32, now_unix_nanos: i64) -> u64 {
    #[cfg(target_arch = "wasm32")]
    return crate::bindings::peregrine::rules::state::counter_add(
        key,
        delta,
        window_seconds,
        now_unix_nanos,
    );
    #[cfg(not(target_arch = "wasm32"))]
    NATIVE.with(|t| {
        t.borrow_mut()
            .counter_add(key, delta, window_seconds, now_unix_nanos)
    })
}

/// Records `member` in the set `key` and returns the number of distinct
/// members seen over the last `window_seconds` ending at `now_unix_nanos`.
pub fn distinct_add(key: &str, member: &str, window_seconds: u32, now_unix_nanos: i64) -> u64 {
    #[cfg(target_arch = "wasm32")]
    return crate::bindings::peregrine::rules::state::distinct_add(
        key,
        member,
        window_seconds,
        now_unix_nanos,
    );
    #[cfg(not(target_arch = "wasm32"))]
    NATIVE.with(|t| {
        t.borrow_mut()
            .distinct_add(key, member, window_seconds, now_unix_nanos)
    })
}

/// True if `key` was not seen in the `ttl_seconds` before `now_unix_nanos`.
/// Marks it seen now either way.
pub fn first_seen(key: &str, ttl_seconds: u32, now_unix_nanos: i64) -> bool {
    #[cfg(target_arch = "wasm32")]
    return crate::bindings::peregrine::rules::state::first_seen(key, ttl_seconds, now_unix_nanos);
    #[cfg(not(target_arch = "wasm32"))]
    NATIVE.with(|t| t.borrow_mut().first_seen(key, ttl_seconds, now_unix_nanos))
}

#[cfg(not(target_arch = "wasm32"))]
std::thread_local! {
    static NATIVE: std::cell::RefCell<StateTable> = std::cell::RefCell::new(StateTable::new(StateLimits::default()));
}

/// Clears the native state of this thread (between unit tests).
#[cfg(not(target_arch = "wasm32"))]
pub fn reset() {
    NATIVE.with(|t| *t.borrow_mut() = StateTable::new(StateLimits::default()));
}

/// Size bounds of one [`StateTable`].
#[derive(Debug, Clone, Copy)]
pub struct StateLimits {
    /// Keys across counters, sets and first-seen markers.
    pub max_keys: usize,
    /// Members of one distinct set.
    pub max_members: usize,
}

impl Default for StateLimits {
    fn default() -> Self {
        StateLimits {
            max_keys: 100_000,
            max_members: 10_000,
        }
    }
}

enum Entry {
    /// Per-second buckets, oldest first: (second, count).
    Counter(VecDeque<(i64, u64)>),
    /// Member -> last second it was seen.
    Distinct(HashMap<String, i64>),
    /// Last time the key was seen, in nanoseconds.
    Seen(i64),
}

struct Slot {
    entry: Entry,
    /// Latest event time that touched the slot, for eviction.
    touched: i64,
    /// How long the slot matters after `touched`, in nanoseconds.
    horizon: i64,
}

/// The reference implementation of the `state` interface: one table per
/// tenant and module. Memory is bounded: expired keys are purged first, then
/// the least recently touched keys are evicted, and every eviction is counted.
pub struct StateTable {
    slots: HashMap<(u8, String), Slot>,
    limits: StateLimits,
    evictions: u64,
}

impl StateTable {
    pub fn new(limits: StateLimits) -> Self {
        StateTable {
            slots: HashMap::new(),
            limits,
            evictions: 0,
        }
    }

    /// Keys currently held.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Keys or members dropped to stay within the limits.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    fn slot(
        &mut self,
        kind: u8,
        key: &str,
        now: i64,
        horizon: i64,
        fresh: impl FnOnce() -> Entry,
    ) -> &mut Slot {
        let id = (kind, key.to_string());
        if !self.slots.contains_key(&id) && self.slots.len() >= self.limits.max_keys {
            self.make_room(now);
        }
        let slot = self.slots.entry(id).or_insert_with(|| Slot {
            entry: fresh(),
            touched: now,
            horizon,
        });
        slot.touched = slot.touched.max(now);
        slot.horizon = slot.horizon.max(horizon);
        slot
    }

    fn make_room(&mut self, now: i64) {
        let before = self.slots.len();
        self.slots
            .retain(|_, s| s.touched.saturating_add(s.horizon) > now);
        if self.slots.len() >= self.limits.max_keys {
            // Still full of live keys: drop the least recently touched tenth,
            // so the next insertions do not each pay for a scan.
            let mut touched: Vec<i64> = self.slots.values().map(|s| s.touched).collect();
            let cut = (self.limits.max_keys / 10).max(1).min(touched.len() - 1);
            touched.select_nth_unstable(cut);
            let threshold = touched[cut];
            let mut budget = cut;
            self.slots.retain(|_, s| {
                if budget > 0 && s.touched <= threshold {
                    budget -= 1;
                    false
                } else {
                    true
                }
            });
        }
        self.evictions += (before - self.slots.len()) as u64;
    }

    pub fn counter_add(&mut self, key: &str, delta: u32, window_seconds: u32, now: i64) -> u64 {
        let window = i64::from(window_seconds.max(1));
        let sec = now.div_euclid(NANOS);
        let slot = self.slot(0, key, now, window * NANOS, || {
            Entry::Counter(VecDeque::new())
        });
        let Entry::Counter(buckets) = &mut slot.entry else {
            unreachable!("kind 0 is always a counter")
        };
        match buckets.iter_mut().find(|(s, _)| *s == sec) {
            Some((_, count)) => *count = count.saturating_add(u64::from(delta)),
            None => {
                // Events can arrive slightly out of order; keep buckets sorted.
                let at = buckets.partition_point(|(s, _)| *s < sec);
                buckets.insert(at, (sec, u64::from(delta)));
            }
        }
        let newest = buckets.back().map_or(sec, |(s, _)| *s);
        while buckets.front().is_some_and(|(s, _)| *s <= newest - window) {
            buckets.pop_front();
        }
        buckets
            .iter()
            .filter(|(s, _)| *s > sec - window && *s <= sec)
            .map(|(_, c)| *c)
            .fold(0u64, u64::saturating_add)
    }

    pub fn distinct_add(&mut self, key: &str, member: &str, window_seconds: u32, now: i64) -> u64 {
        let window = i64::from(window_seconds.max(1));
        let sec = now.div_euclid(NANOS);
        let max_members = self.limits.max_members;
        let slot = self.slot(1, key, now, window * NANOS, || {
            Entry::Distinct(HashMap::new())
        });
        let Entry::Distinct(members) = &mut slot.entry else {
            unreachable!("kind 1 is always a distinct set")
        };
        members.retain(|_, last| *last > sec - window);
        let mut evicted = 0;
        if !members.contains_key(member)
            && members.len() >= max_members
            && let Some(oldest) = members
                .iter()
                .min_by_key(|(_, last)| **last)
                .map(|(m, _)| m.clone())
        {
            members.remove(&oldest);
            evicted = 1;
        }
        let last = members.entry(member.to_string()).or_insert(sec);
        *last = (*last).max(sec);
        let count = members.len() as u64;
        self.evictions += evicted;
        count
    }

    pub fn first_seen(&mut self, key: &str, ttl_seconds: u32, now: i64) -> bool {
        let ttl = i64::from(ttl_seconds.max(1)) * NANOS;
        let mut fresh = false;
        let slot = self.slot(2, key, now, ttl, || {
            fresh = true;
            Entry::Seen(now)
        });
        let Entry::Seen(last) = &mut slot.entry else {
            unreachable!("kind 2 is always a first-seen marker")
        };
        if fresh {
            return true;
        }
        let first = now.saturating_sub(*last) >= ttl;
        *last = (*last).max(now);
        first
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = NANOS;

    #[test]
    fn counter_slides_with_event_time() {
        let mut t = StateTable::new(StateLimits::default());
        assert_eq!(t.counter_add("k", 1, 10, 100 * S), 1);
        assert_eq!(t.counter_add("k", 2, 10, 105 * S), 3);
        assert_eq!(t.counter_add("k", 1, 10, 109 * S + 5), 4);
        // 100 falls out of (100, 110].
        assert_eq!(t.counter_add("k", 1, 10, 110 * S), 4);
        assert_eq!(t.counter_add("k", 0, 10, 200 * S), 0);
    }

    #[test]
    fn distinct_counts_members_in_window() {
        let mut t = StateTable::new(StateLimits::default());
        assert_eq!(t.distinct_add("ns", "a", 60, 0), 1);
        assert_eq!(t.distinct_add("ns", "a", 60, S), 1);
        assert_eq!(t.distinct_add("ns", "b", 60, 2 * S), 2);
        assert_eq!(
            t.distinct_add("ns", "c", 60, 61 * S),
            2,
            "a was last seen at 1s and expired"
        );
    }

    #[test]
    fn first_seen_respects_ttl() {
        let mut t = StateTable::new(StateLimits::default());
        assert!(t.first_seen("u", 60, 0));
        assert!(!t.first_seen("u", 60, 30 * S));
        assert!(!t.first_seen("u", 60, 89 * S));
        assert!(t.first_seen("u", 60, 150 * S));
    }

    #[test]
    fn table_stays_within_its_key_limit() {
        let mut t = StateTable::new(StateLimits {
            max_keys: 100,
            max_members: 5,
        });
        for i in 0..1_000 {
            t.first_seen(&format!("k{i}"), 3600, i * S);
        }
        assert!(t.len() <= 100);
        assert!(t.evictions() >= 900);
        for i in 0..20 {
            t.distinct_add("set", &format!("m{i}"), 3600, 2_000 * S);
        }
        assert_eq!(t.distinct_add("set", "m0", 3600, 2_000 * S), 5);
    }
}
