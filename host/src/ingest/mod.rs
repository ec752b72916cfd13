//! Getting audit events in: the webhook, and files or stdin for replay.

pub mod decode;
pub mod dedup;
pub(crate) mod envelope;
pub mod journal;
pub mod replay;
pub(crate) mod submit;
pub mod webhook;

pub use decode::{Decoded, PayloadError, Rejection, decode_payload};
pub use dedup::Dedup;
