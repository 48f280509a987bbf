//! The one mapping from the service's errors to gRPC statuses.
//!
//! Codes are chosen by meaning, as the gRPC specification defines them; invalid arguments name
//! their field in a `BadRequest` detail as well as in the message.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::error::Error;

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let message = e.to_string();
        match e {
            Error::Unauthenticated(_) => Status::unauthenticated(message),
            Error::InvalidArgument {
                field,
                message: description,
            } => Status::with_error_details(
                Code::InvalidArgument,
                message,
                ErrorDetails::with_bad_request_violation(field, description),
            ),
            Error::PermissionDenied(_) => Status::permission_denied(message),
            Error::NotFound(_) => Status::not_found(message),
            Error::AlreadyExists(_) => Status::already_exists(message),
            Error::FailedPrecondition(_) => Status::failed_precondition(message),
            Error::Aborted(_) => Status::aborted(message),
            Error::DeadlineExceeded(_) => Status::deadline_exceeded(message),
            Error::ResourceExhausted(_) => Status::resource_exhausted(message),
            Error::Unavailable(_) => Status::unavailable(message),
            Error::Internal(_) => {
                tracing::error!(error = %message, "internal error");
                Status::internal("internal error")
            }
        }
    }
}
