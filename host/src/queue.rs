//! The queue between ingest and the evaluation stage: batches of one
//! tenant's events, bounded in events and bytes, served round-robin.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};

use peregrine_sdk::audit::AuditEvent;

use crate::alert::Alert;

/// Events of one tenant, evaluated together with one instance per module.
pub struct Batch {
    pub tenant: Arc<str>,
    /// The cluster the events came from (`peregrine.cluster` of their alerts).
    pub cluster: Arc<str>,
    pub events: Vec<AuditEvent>,
    /// Where to send the alerts instead of the sink (replay keeps order this way).
    pub reply: Option<crossbeam_channel::Sender<Vec<Alert>>>,
    /// The batch's entry in the ingest journal, completed once its alerts
    /// are durable in every output they are routed to.
    pub journal: Option<crate::ingest::journal::JournalEntry>,
}

/// The queue between ingest and the workers. Bounded in events, not batches,
/// since that is what the apiserver's retry budget is counted in, and in
/// bytes, since that is what memory is: a few thousand huge events fill
/// memory long before the event bound is reached.
/// Tenants are served round-robin so one tenant's flood queues behind itself,
/// not in front of everyone else, and while others wait no tenant holds more
/// than `workers - 1` workers, so a tenant whose rules are slow cannot occupy
/// every worker.
pub struct BatchQueue {
    inner: Mutex<QueueState>,
    ready: Condvar,
    /// Signalled when batches leave (or the queue closes), for
    /// [`BatchQueue::push_wait`].
    room: Condvar,
    capacity: usize,
    capacity_bytes: usize,
    max_in_flight: std::sync::atomic::AtomicUsize,
}

#[derive(Default)]
struct QueueState {
    /// Each batch with its size in bytes (see [`event_bytes`]).
    per_tenant: HashMap<Arc<str>, VecDeque<(Batch, usize)>>,
    /// Events and bytes each tenant has queued.
    tenant_load: HashMap<Arc<str>, (usize, usize)>,
    /// Tenants with queued batches, in service order.
    ring: VecDeque<Arc<str>>,
    /// Batches each tenant has on the workers now.
    in_flight: HashMap<Arc<str>, usize>,
    events: usize,
    bytes: usize,
    closed: bool,
}

/// Why a batch was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    #[error("the event queue is full")]
    Full,
    #[error("the tenant's share of the event queue is full")]
    TenantFull,
    #[error("shutting down")]
    Closed,
}

/// What an event costs the queue in memory, roughly: its decoded struct and
/// the text it owns. Raw objects, the bulk of a large event, are counted
/// byte for byte.
pub fn event_bytes(ev: &AuditEvent) -> usize {
    fn user(u: &peregrine_sdk::audit::AuditUser) -> usize {
        u.username.len()
            + u.uid.as_ref().map_or(0, String::len)
            + u.groups.iter().map(|g| g.len() + 24).sum::<usize>()
            + u.extra
                .iter()
                .map(|(k, v)| k.len() + 48 + v.iter().map(|s| s.len() + 24).sum::<usize>())
                .sum::<usize>()
    }
    let opt = |s: &Option<String>| s.as_ref().map_or(0, String::len);
    let raw =
        |r: &Option<Box<serde_json::value::RawValue>>| r.as_ref().map_or(0, |r| r.get().len());
    std::mem::size_of::<AuditEvent>()
        + ev.audit_id.len()
        + ev.stage.len()
        + ev.level.len()
        + ev.verb.len()
        + ev.request_uri.len()
        + user(&ev.user)
        + ev.impersonated_user.as_ref().map_or(0, user)
        + ev.source_ips.iter().map(|s| s.len() + 24).sum::<usize>()
        + opt(&ev.user_agent)
        + ev.object_ref.as_ref().map_or(0, |o| {
            std::mem::size_of_val(o)
                + [
                    &o.resource,
                    &o.subresource,
                    &o.namespace,
                    &o.name,
                    &o.uid,
                    &o.api_group,
                    &o.api_version,
                    &o.resource_version,
                ]
                .into_iter()
                .map(opt)
                .sum::<usize>()
        })
        + ev.response_status.as_ref().map_or(0, std::mem::size_of_val)
        + raw(&ev.request_object)
        + raw(&ev.response_object)
        + opt(&ev.request_received_timestamp)
        + opt(&ev.stage_timestamp)
        + opt(&ev.timestamp)
        + ev.annotations
            .iter()
            .map(|(k, v)| k.len() + v.len() + 64)
            .sum::<usize>()
}

impl BatchQueue {
    /// A queue of at most `capacity` events and `capacity_bytes` bytes.
    pub fn new(capacity: usize, capacity_bytes: usize) -> Self {
        BatchQueue {
            inner: Mutex::new(QueueState::default()),
            ready: Condvar::new(),
            room: Condvar::new(),
            capacity,
            capacity_bytes,
            max_in_flight: std::sync::atomic::AtomicUsize::new(usize::MAX),
        }
    }

    /// Tells the queue how many workers serve it: while other tenants wait,
    /// one tenant gets at most `workers - 1` of them (at least one).
    pub fn set_workers(&self, workers: usize) {
        self.max_in_flight
            .store(workers.saturating_sub(1).max(1), Ordering::Relaxed);
    }

    fn state(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a batch unless the queue, or the tenant's `share` of it (a
    /// fraction of both bounds, events and bytes), would overflow. All or
    /// nothing: the apiserver retries whole batches.
    pub fn push(&self, batch: Batch, share: Option<f64>) -> Result<(), QueueError> {
        let bytes = batch.events.iter().map(event_bytes).sum();
        let mut s = self.state();
        self.try_push(&mut s, batch, bytes, share)
            .map_err(|(e, _)| e)?;
        drop(s);
        self.ready.notify_one();
        Ok(())
    }

    /// Queues a batch, waiting for room (tenant shares do not apply); for
    /// recovery at start, which must not refuse what was acknowledged.
    /// Fails only once the queue is closed.
    pub fn push_wait(&self, batch: Batch) -> Result<(), QueueError> {
        let bytes = batch.events.iter().map(event_bytes).sum();
        let mut s = self.state();
        let mut batch = batch;
        loop {
            match self.try_push(&mut s, batch, bytes, None) {
                Ok(()) => break,
                Err((QueueError::Full, b)) => {
                    batch = b;
                    s = self.room.wait(s).unwrap_or_else(|p| p.into_inner());
                }
                Err((e, _)) => return Err(e),
            }
        }
        drop(s);
        self.ready.notify_one();
        Ok(())
    }

    fn try_push(
        &self,
        s: &mut QueueState,
        batch: Batch,
        bytes: usize,
        share: Option<f64>,
    ) -> Result<(), (QueueError, Batch)> {
        let n = batch.events.len();
        if s.closed {
            return Err((QueueError::Closed, batch));
        }
        // A batch larger than the whole queue (or the tenant's share) still
        // goes in when nothing is queued, or it could never be taken.
        let over = |now: (usize, usize), cap: (usize, usize)| {
            (now.0 > 0 || now.1 > 0) && (now.0 + n > cap.0 || now.1 + bytes > cap.1)
        };
        if over((s.events, s.bytes), (self.capacity, self.capacity_bytes)) {
            return Err((QueueError::Full, batch));
        }
        let tenant_now = s.tenant_load.get(&batch.tenant).copied().unwrap_or((0, 0));
        if let Some(share) = share {
            let part = |cap: usize| ((cap as f64) * share.clamp(0.0, 1.0)).ceil() as usize;
            if over(tenant_now, (part(self.capacity), part(self.capacity_bytes))) {
                return Err((QueueError::TenantFull, batch));
            }
        }
        s.events += n;
        s.bytes += bytes;
        let load = s.tenant_load.entry(batch.tenant.clone()).or_default();
        load.0 += n;
        load.1 += bytes;
        let tenant = batch.tenant.clone();
        let q = s.per_tenant.entry(tenant.clone()).or_default();
        q.push_back((batch, bytes));
        if q.len() == 1 {
            s.ring.push_back(tenant);
        }
        s.publish();
        Ok(())
    }

    /// The next batch, round-robin over tenants; `None` once closed and drained.
    /// A tenant that already holds its share of the workers is passed over
    /// while another tenant has work; with no one else waiting it may use
    /// them all. Call [`BatchQueue::done`] when the batch is evaluated.
    pub fn pop(&self) -> Option<Batch> {
        let cap = self.max_in_flight.load(Ordering::Relaxed);
        let mut s = self.state();
        loop {
            let eligible = s
                .ring
                .iter()
                .position(|t| s.in_flight.get(t).copied().unwrap_or(0) < cap);
            if let Some(tenant) = eligible
                .or((!s.ring.is_empty()).then_some(0))
                .and_then(|i| s.ring.remove(i))
            {
                let q = s
                    .per_tenant
                    .get_mut(&tenant)
                    .expect("ring names a queued tenant");
                let (batch, bytes) = q.pop_front().expect("ring names a non-empty queue");
                if q.is_empty() {
                    s.per_tenant.remove(&tenant);
                } else {
                    s.ring.push_back(tenant.clone());
                }
                let n = batch.events.len();
                s.events -= n;
                s.bytes -= bytes;
                if let Some(load) = s.tenant_load.get_mut(&tenant) {
                    load.0 -= n;
                    load.1 -= bytes;
                    if load.0 == 0 && load.1 == 0 {
                        s.tenant_load.remove(&tenant);
                    }
                }
                *s.in_flight.entry(tenant).or_default() += 1;
                s.publish();
                drop(s);
                self.room.notify_all();
                return Some(batch);
            }
            if s.closed {
                return None;
            }
            s = self.ready.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// A batch of `tenant` taken by [`BatchQueue::pop`] is evaluated.
    pub fn done(&self, tenant: &Arc<str>) {
        let mut s = self.state();
        if let Some(n) = s.in_flight.get_mut(tenant) {
            *n -= 1;
            if *n == 0 {
                s.in_flight.remove(tenant);
            }
        }
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        self.state().events
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes waiting (see [`event_bytes`]).
    pub fn bytes(&self) -> usize {
        self.state().bytes
    }

    /// Events of `tenant` waiting.
    pub fn tenant_len(&self, tenant: &str) -> usize {
        self.state().tenant_load.get(tenant).map_or(0, |l| l.0)
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn capacity_bytes(&self) -> usize {
        self.capacity_bytes
    }

    /// Stops accepting batches; workers finish what is queued, then stop.
    pub fn close(&self) {
        self.state().closed = true;
        self.ready.notify_all();
        self.room.notify_all();
    }
}

impl QueueState {
    fn publish(&self) {
        metrics::gauge!("peregrine_queue_events").set(self.events as f64);
        metrics::gauge!("peregrine_queue_bytes").set(self.bytes as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(tenant: &str, n: usize) -> Batch {
        let ev: AuditEvent =
            serde_json::from_str(r#"{"auditID":"a","stage":"ResponseComplete","verb":"get"}"#)
                .unwrap();
        Batch {
            tenant: tenant.into(),
            cluster: tenant.into(),
            events: vec![ev; n],
            reply: None,
            journal: None,
        }
    }

    #[test]
    fn queue_is_bounded_in_events_and_per_tenant_share() {
        let q = BatchQueue::new(10, usize::MAX);
        q.push(batch("a", 6), None).unwrap();
        assert_eq!(q.push(batch("b", 5), None), Err(QueueError::Full));
        assert_eq!(
            q.push(batch("a", 2), Some(0.5)),
            Err(QueueError::TenantFull)
        );
        q.push(batch("b", 4), Some(0.5)).unwrap();
        assert_eq!((q.len(), q.tenant_len("a"), q.tenant_len("b")), (10, 6, 4));
        q.close();
        assert_eq!(q.push(batch("b", 1), None), Err(QueueError::Closed));
        assert!(q.pop().is_some() && q.pop().is_some() && q.pop().is_none());
    }

    #[test]
    fn queue_is_bounded_in_bytes_and_per_tenant_share_of_them() {
        let one = event_bytes(&batch("a", 1).events[0]);
        assert!(one > 100, "{one}");
        // Room for 10 events' bytes, and a thousand times as many events.
        let q = BatchQueue::new(10_000, one * 10);
        q.push(batch("a", 6), None).unwrap();
        assert_eq!(q.bytes(), one * 6);
        assert_eq!(q.push(batch("b", 5), None), Err(QueueError::Full));
        assert_eq!(
            q.push(batch("a", 2), Some(0.5)),
            Err(QueueError::TenantFull)
        );
        q.push(batch("b", 4), Some(0.5)).unwrap();
        assert_eq!(q.push(batch("c", 1), None), Err(QueueError::Full));
        assert!(q.pop().is_some());
        assert_eq!(q.bytes(), one * 4);
        assert!(q.pop().is_some());
        assert_eq!((q.len(), q.bytes()), (0, 0));
        // A batch larger than the whole queue goes in when it is empty.
        q.push(batch("c", 30), Some(0.1)).unwrap();
        assert_eq!(q.bytes(), one * 30);
    }

    #[test]
    fn push_wait_waits_for_room_and_gives_up_when_closed() {
        let q = Arc::new(BatchQueue::new(10, usize::MAX));
        q.push(batch("a", 8), None).unwrap();
        let pusher = {
            let q = q.clone();
            std::thread::spawn(move || q.push_wait(batch("a", 5)))
        };
        // The pusher cannot finish before room is made; it goes in after.
        let first = q.pop().unwrap();
        assert_eq!(first.events.len(), 8);
        pusher.join().unwrap().unwrap();
        assert_eq!(q.len(), 5);
        q.push(batch("a", 5), None).unwrap();
        let blocked = {
            let q = q.clone();
            std::thread::spawn(move || q.push_wait(batch("a", 5)))
        };
        q.close();
        assert_eq!(blocked.join().unwrap(), Err(QueueError::Closed));
    }

    #[test]
    fn tenants_take_turns_and_none_holds_every_worker_while_others_wait() {
        let q = BatchQueue::new(1_000, usize::MAX);
        q.set_workers(2);
        for _ in 0..3 {
            q.push(batch("a", 1), None).unwrap();
        }
        // Alone, tenant a may use both workers.
        let first = q.pop().unwrap();
        let second = q.pop().unwrap();
        assert_eq!((&*first.tenant, &*second.tenant), ("a", "a"));
        q.push(batch("b", 1), None).unwrap();
        q.done(&first.tenant);
        // a still holds one worker, its share while b waits: b goes next.
        assert_eq!(&*q.pop().unwrap().tenant, "b");
        // With everyone at their share, work goes on rather than idle.
        assert_eq!(&*q.pop().unwrap().tenant, "a");
    }

    #[test]
    fn tenants_are_served_round_robin() {
        let q = BatchQueue::new(1_000, usize::MAX);
        for t in ["a", "a", "a", "b", "c"] {
            q.push(batch(t, 1), None).unwrap();
        }
        let order: Vec<String> = (0..5)
            .map(|_| {
                let b = q.pop().unwrap();
                q.done(&b.tenant);
                b.tenant.to_string()
            })
            .collect();
        assert_eq!(order, ["a", "b", "c", "a", "a"]);
    }
}
