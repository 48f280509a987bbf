//! The service's error: one kind per gRPC code, chosen by meaning.
//!
//! Every layer converts its own errors into this one at its boundary; `grpc::status` is the one
//! place that turns it into a `tonic::Status`.

use crate::domain::DomainError;
use crate::store::StoreError;

/// An error as the caller will see it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Missing or invalid credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// A request field is malformed.
    #[error("{field}: {message}")]
    InvalidArgument {
        /// The field, as named in the request message (dotted for nested fields).
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The caller may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// Something named does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The thing to create exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// The current state does not allow the request.
    #[error("{0}")]
    FailedPrecondition(String),
    /// Lost an optimistic race, even after retries.
    #[error("{0}")]
    Aborted(String),
    /// A read could not reach the requested position in time.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The input is too large.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The event store cannot be reached.
    #[error("{0}")]
    Unavailable(String),
    /// A fault that needs an operator.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// An invalid-argument error naming `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl From<DomainError> for Error {
    fn from(e: DomainError) -> Self {
        match e {
            DomainError::InvalidArgument { field, message } => Error::invalid(field, message),
            DomainError::PermissionDenied(m) => Error::PermissionDenied(m),
            DomainError::NotFound(what) => Error::NotFound(format!("{what} not found")),
            DomainError::AlreadyExists(m) => Error::AlreadyExists(m),
            DomainError::FailedPrecondition(m) => Error::FailedPrecondition(m),
        }
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Reserved { scope, .. } if scope == crate::executor::EMAIL_SCOPE => {
                Error::AlreadyExists("email is already registered".into())
            }
            StoreError::Reserved { scope, key } if scope == crate::executor::DOMAIN_SCOPE => {
                Error::AlreadyExists(format!("the domain `{key}` is already registered"))
            }
            StoreError::Reserved { scope, key } => {
                Error::AlreadyExists(format!("{scope} `{key}` is already taken"))
            }
            StoreError::Conflict { stream_id, .. } => {
                Error::Aborted(format!("concurrent changes to {stream_id}; try again"))
            }
            StoreError::Unavailable(source) => {
                Error::Unavailable(format!("event store unavailable: {source}"))
            }
            StoreError::DuplicateRequest(_) => {
                Error::Internal("duplicate request reached the caller unresolved".into())
            }
            other => Error::Internal(other.to_string()),
        }
    }
}

/// Result alias of the service.
pub type Result<T, E = Error> = std::result::Result<T, E>;
