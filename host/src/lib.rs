//! Peregrine: a detection host for Kubernetes audit logs.
//!
//! [`app::Peregrine`] builds the whole process from a configuration. The
//! pipeline, stage by stage: [`ingest`] (webhook, replay, sources) ->
//! [`queue`] -> [`evaluate`] (worker threads running the [`rules`] in the
//! [`engine`] sandbox) -> [`alert`] -> [`router`] -> [`outputs`] and
//! [`store`]; [`durable`] tells the ingest journal when a batch's alerts
//! are safe in every output. [`server`] is the HTTP surface, [`reload`]
//! keeps the live rules in step with their files, [`tenants`] says who may
//! post what.

pub mod alert;
pub mod api;
pub mod app;
pub mod cli;
pub mod commands;
pub mod config;
pub mod connections;
pub mod durable;
pub mod engine;
pub mod evaluate;
pub mod health;
pub mod ingest;
pub mod oci;
pub mod outputs;
pub mod paths;
pub mod prometheus;
pub mod queue;
pub mod reload;
pub mod router;
pub mod rules;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod tenants;
pub mod tls;
