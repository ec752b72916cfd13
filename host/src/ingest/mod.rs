//! Getting audit events in: the webhook, and files or stdin for replay.

pub(crate) mod body;
pub mod decode;
pub mod dedup;
pub(crate) mod envelope;
pub(crate) mod firehose_http;
pub mod journal;
pub(crate) mod oidc;
pub(crate) mod pubsub_http;
pub(crate) mod push;
pub mod replay;
pub mod sources;
pub(crate) mod submit;
pub mod webhook;

pub use decode::{Decoded, PayloadError, Rejection, decode_payload};
pub use dedup::Dedup;
