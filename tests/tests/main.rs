//! Peregrine's integration tests, linked into one binary so wasmtime is
//! linked once. Each file is one area; a new file needs its `mod` line here.

mod outputs_support;

mod falco_parity;
mod outputs;
mod outputs_docs;
mod outputs_services;
mod peer_suite;
mod reload;
mod sandbox;
mod tenants;
mod tls;
mod ui;
mod webhook;
