//! Closing a connection whose request body was not read.
//!
//! Some answers come before the body is read: a 401 from `auth`, a 415 from `content_type`, a
//! 413, a deadline. hyper then drains what has already arrived and, when the rest is still on
//! the wire, closes the connection after the answer, without saying so in the answer. A client
//! that pools connections (every HTTP client library does) puts that connection back and its
//! next request fails with "connection reset" or "peer disconnected", and whether it does
//! depends on packet timing, so it shows up only under load. RFC 9112 §9.6 says a server that
//! closes without reading the body sends `Connection: close`; this layer does exactly that, and
//! only then, by watching whether the body reached its end.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;

/// Adds `Connection: close` to the answer of a request whose body was not read to its end.
pub async fn close_if_unread(request: Request, next: Next) -> Response {
    let has_body = request.headers().contains_key(header::TRANSFER_ENCODING)
        || request.headers().get(header::CONTENT_LENGTH).is_some_and(|n| n.as_bytes() != b"0");
    if !has_body {
        return next.run(request).await;
    }
    let ended = Arc::new(AtomicBool::new(false));
    let request = request.map(|body| Body::new(Watched { inner: body, ended: ended.clone() }));
    let mut response = next.run(request).await;
    if !ended.load(Ordering::Acquire) {
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// A body that records when it has been read to its end.
struct Watched {
    inner: Body,
    ended: Arc<AtomicBool>,
}

impl HttpBody for Watched {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.ended.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
