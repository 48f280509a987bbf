//! onbehalf: an event-sourced delegation service.
//!
//! This crate holds the write side (aggregates and the command executor), the event stores,
//! the read side that feeds the projections, the gRPC server and the command-line interface.

#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    unreachable_pub,
    missing_debug_implementations,
    rust_2018_idioms
)]

pub mod auth;
pub mod cli;
pub mod clock;
pub mod demo;
pub mod domain;
pub mod error;
pub mod executor;
pub mod grpc;
pub mod history;
pub mod limit;
pub mod mailer;
pub mod panel;
pub mod project;
pub mod read;
pub mod readmodel_pg;
pub mod relay;
pub mod scheduler;
pub mod server;
pub mod store;
pub mod testing;
pub mod tokens;
