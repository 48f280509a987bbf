//! Refuses request messages over a configured size with `RESOURCE_EXHAUSTED`, and opens the
//! tracing span of each RPC (method, actor, account and request id).
//!
//! tonic's own decoding limit answers `OUT_OF_RANGE`; the gRPC specification and our error
//! contract call for `RESOURCE_EXHAUSTED`, so the limit is enforced here, before decoding, and
//! tonic's limit is set just above it as a second line.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body_util::{BodyExt, Limited};
use tonic::body::Body;
use tower::{Layer, Service};

/// The gRPC frame header that precedes each message: a flag byte and a 4-byte length.
const FRAME_HEADER: usize = 5;

/// A layer that limits the size of request bodies.
#[derive(Debug, Clone, Copy)]
pub struct SizeLimitLayer {
    max_message_bytes: usize,
}

impl SizeLimitLayer {
    /// Limits each request to one message of at most `max_message_bytes`.
    pub fn new(max_message_bytes: usize) -> Self {
        Self { max_message_bytes }
    }
}

impl<S> Layer<S> for SizeLimitLayer {
    type Service = SizeLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SizeLimit {
            inner,
            limit: self.max_message_bytes + FRAME_HEADER,
        }
    }
}

/// The service built by [`SizeLimitLayer`].
#[derive(Debug, Clone)]
pub struct SizeLimit<S> {
    inner: S,
    limit: usize,
}

impl<S> Service<http::Request<Body>> for SizeLimit<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // The clone that was made ready is the one that serves this request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let limit = self.limit;
        let span = tracing::info_span!(
            "rpc",
            method = %request.uri().path(),
            actor = tracing::field::Empty,
            account_id = tracing::field::Empty,
            request_id = tracing::field::Empty,
        );
        // Only onbehalf's own RPCs are unary; reflection is a bidirectional stream whose
        // request body stays open, so buffering it would stall the client.
        let unary = request.uri().path().starts_with("/onbehalf.v1.");
        Box::pin(tracing::Instrument::instrument(
            async move {
                if !unary {
                    return inner.call(request).await;
                }
                let (parts, body) = request.into_parts();
                // LIMITATION: request bodies are buffered whole (up to the limit), which suits the unary RPCs this server has; client streaming would need a per-message check.
                match Limited::new(body, limit).collect().await {
                    Ok(collected) => {
                        let body = Body::new(http_body_util::Full::new(collected.to_bytes()));
                        inner.call(http::Request::from_parts(parts, body)).await
                    }
                    Err(e)
                        if e.downcast_ref::<http_body_util::LengthLimitError>()
                            .is_some() =>
                    {
                        Ok(tonic::Status::resource_exhausted(format!(
                            "request message exceeds the limit of {} bytes",
                            limit - FRAME_HEADER
                        ))
                        .into_http())
                    }
                    Err(e) => Ok(
                        tonic::Status::cancelled(format!("request body failed: {e}")).into_http(),
                    ),
                }
            },
            span,
        ))
    }
}
