//! The onbehalf gRPC contract, package `onbehalf.v1`, generated at build time.

#![forbid(unsafe_code)]
#![allow(missing_docs, clippy::all)]

/// Generated messages, clients and servers of `onbehalf.v1`.
pub mod v1 {
    tonic::include_proto!("onbehalf.v1");
}

/// The encoded file descriptor set of the contract, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("onbehalf_descriptor");
