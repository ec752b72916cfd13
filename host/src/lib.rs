//! Peregrine: a detection host for Kubernetes audit logs.
