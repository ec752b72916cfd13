//! What both integration-test binaries share, written once: where the
//! built rule modules, the audit corpus and the compile cache are, audit
//! events to post, waiting, reading `/metrics`, requests with curl, and the
//! real `peregrine` binary in a child process on an ephemeral port.
//!
//! Compiled into the `peregrine-tests` library (`tests/src/lib.rs`) and into
//! the host's test binary (`host/tests/main.rs`), both with `#[path]`: it
//! needs no type of the `peregrine` library, so the host's tests, which only
//! run the binary, take it without depending on the `peregrine-tests` crate.
//! Cargo says where the binary is to the host's tests only, so only they can
//! start it.

// Each binary uses a part of it.
#![allow(dead_code)]

mod events;
mod http;
mod metrics;
mod paths;
mod serve;
mod wait;

pub use events::*;
pub use http::*;
pub use metrics::*;
pub use paths::*;
pub use serve::*;
pub use wait::*;
