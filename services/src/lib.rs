//! onbehalf: an event-sourced delegation service.
//!
//! This crate holds the write side (aggregates and the command executor), the event stores,
//! the gRPC server and the command-line interface.

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub, missing_debug_implementations, rust_2018_idioms)]

pub mod store;
pub mod testing;
