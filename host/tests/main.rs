//! The host's integration tests, linked into one binary so wasmtime is
//! linked once: they run the real `peregrine` binary, as a user, an
//! apiserver or a log shipper would. Each file is one area; a new file
//! needs its `mod` line here.

#[path = "../../tests/support/mod.rs"]
mod support;

mod api_auth;
mod bench_quick;
mod cli;
mod clusters;
mod file_source;
mod firehose;
mod journal_restart;
mod limits;
mod oci;
mod outputs_restart;
mod pubsub;
mod quarantine;
mod rules_dir;
