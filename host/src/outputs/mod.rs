//! Where alerts go. One file per output kind.

pub mod stdout;
