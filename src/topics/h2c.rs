//! A lean HTTP/2 client for `http` topics with `http2 = true` on a plain `http://` URL (h2c with
//! prior knowledge): one shared connection per handler, opened on first use and again after it
//! fails, carrying every concurrent call as a stream. It exists for memory: a call waiting for its
//! answer holds one h2 stream and this module's small future, instead of reqwest's and the pooled
//! client's layers (about 9.5 KB a call). It only POSTs JSON and reads the answer under a size
//! cap; what the answer means is `http_handler`'s business (a 3xx is an answer like any other:
//! no redirect is followed). It never logs or returns the URL.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use base64::Engine as _;
use bytes::Bytes;
use h2::client::SendRequest;
use http::{HeaderValue, Method, Request, StatusCode, Uri, Version, header};

/// Largest answer body read; a bigger one is refused rather than held in memory.
pub const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// How long opening the connection may take (TCP connect plus the HTTP/2 preface).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// After a failed connect, calls fail at once for this long instead of each trying again: with
/// thousands of calls queued on a dead downstream, one attempt a second is enough.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

/// Why a call got no answer. Every variant is worth retrying: the downstream did not (knowingly)
/// process the request, or the answer was lost on the way.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("downstream unreachable: {0}")]
    Unreachable(String),
    #[error("downstream answer is larger than {MAX_ANSWER_BYTES} bytes")]
    TooLarge,
}

/// What the downstream answered.
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

/// Whether the answer's body is wanted: only the statuses whose body the caller reads.
pub type WantBody = fn(StatusCode) -> bool;

struct Conn {
    send: SendRequest<Bytes>,
    /// Cleared by the connection's driver when the connection ends.
    alive: Arc<AtomicBool>,
}

/// One downstream reached over HTTP/2 cleartext.
pub struct H2cClient {
    uri: Uri,
    /// `host:port` to connect to.
    address: String,
    /// From the URL's user info, sent as HTTP Basic (as reqwest does for HTTP/1.1 topics).
    authorization: Option<HeaderValue>,
    conn: tokio::sync::Mutex<Option<Conn>>,
    last_failure: Mutex<Option<(Instant, String)>>,
}

impl H2cClient {
    /// A client for `url`, which must be `http://`; no connection is opened yet. The error never
    /// contains the URL (it may hold a password).
    pub fn new(url: &str) -> Result<Self, String> {
        let parsed = url::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
        if parsed.scheme() != "http" {
            return Err("HTTP/2 cleartext needs an http:// URL".into());
        }
        let host = parsed.host_str().ok_or("the URL has no host")?;
        let port = parsed.port_or_known_default().unwrap_or(80);
        let address = format!("{host}:{port}");
        let authorization = basic_auth(&parsed)?;
        let mut bare = parsed.clone();
        // The user info goes in a header, never on the wire as part of the URI.
        let _ = bare.set_username("");
        let _ = bare.set_password(None);
        let uri = bare.as_str().parse::<Uri>().map_err(|e| format!("not a valid request URI: {e}"))?;
        Ok(Self { uri, address, authorization, conn: tokio::sync::Mutex::new(None), last_failure: Mutex::new(None) })
    }

    /// POSTs `body` as JSON and waits for the status and, when `want_body` says so, the body.
    /// No timeout here: the caller bounds the whole call.
    pub async fn post_json(&self, body: Bytes, want_body: WantBody) -> Result<Answer, CallError> {
        let mut send = self.ready_sender().await?;
        let mut request = Request::new(());
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = Version::HTTP_2;
        let headers = request.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        if let Some(authorization) = &self.authorization {
            headers.insert(header::AUTHORIZATION, authorization.clone());
        }
        if let Some(trace) = crate::trace::current()
            && let Ok(value) = HeaderValue::from_str(&trace.child().to_string())
        {
            headers.insert(crate::trace::TRACEPARENT, value);
        }
        let (response, mut stream) = send.send_request(request, false).map_err(unreachable)?;
        stream.send_data(body, true).map_err(unreachable)?;
        let response = response.await.map_err(unreachable)?;
        let status = response.status();
        if !want_body(status) {
            // Dropping the body resets the stream: nothing more is read or buffered.
            return Ok(Answer { status, body: Bytes::new() });
        }
        let declared =
            response.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_ANSWER_BYTES as u64) {
            return Err(CallError::TooLarge);
        }
        let body = read_capped(response.into_body()).await?;
        Ok(Answer { status, body })
    }

    /// A sender on a live connection whose stream limit has room, connecting if there is none.
    /// A connection found dead before anything was sent on it is replaced once.
    async fn ready_sender(&self) -> Result<SendRequest<Bytes>, CallError> {
        let (send, alive) = self.sender().await?;
        match send.ready().await {
            Ok(send) => Ok(send),
            Err(_) => {
                alive.store(false, Ordering::Release);
                self.sender().await?.0.ready().await.map_err(unreachable)
            }
        }
    }

    async fn sender(&self) -> Result<(SendRequest<Bytes>, Arc<AtomicBool>), CallError> {
        let mut slot = self.conn.lock().await;
        if let Some(conn) = slot.as_ref()
            && conn.alive.load(Ordering::Acquire)
        {
            return Ok((conn.send.clone(), conn.alive.clone()));
        }
        *slot = None;
        if let Ok(last) = self.last_failure.lock()
            && let Some((at, reason)) = last.as_ref()
            && at.elapsed() < RECONNECT_PAUSE
        {
            return Err(CallError::Unreachable(reason.clone()));
        }
        // Boxed: connecting is rare, and inline its state would size every call's future.
        match tokio::time::timeout(CONNECT_TIMEOUT, Box::pin(self.connect())).await {
            Ok(Ok(conn)) => {
                let handles = (conn.send.clone(), conn.alive.clone());
                *slot = Some(conn);
                Ok(handles)
            }
            Ok(Err(reason)) => Err(self.failed(reason)),
            Err(_) => Err(self.failed(format!("no connection within {} s", CONNECT_TIMEOUT.as_secs()))),
        }
    }

    fn failed(&self, reason: String) -> CallError {
        if let Ok(mut last) = self.last_failure.lock() {
            *last = Some((Instant::now(), reason.clone()));
        }
        CallError::Unreachable(reason)
    }

    async fn connect(&self) -> Result<Conn, String> {
        let tcp = tokio::net::TcpStream::connect(&self.address).await.map_err(|e| e.to_string())?;
        // Requests are small and written whole: do not let Nagle hold them back.
        let _ = tcp.set_nodelay(true);
        let (send, connection) = h2::client::handshake(tcp).await.map_err(|e| e.to_string())?;
        let alive = Arc::new(AtomicBool::new(true));
        let flag = alive.clone();
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::warn!(%error, "HTTP/2 downstream connection ended");
            }
            flag.store(false, Ordering::Release);
        });
        Ok(Conn { send, alive })
    }
}

fn unreachable(error: h2::Error) -> CallError {
    CallError::Unreachable(error.to_string())
}

/// Reads a response body, handing flow-control credit back as it goes, up to the cap.
async fn read_capped(mut body: h2::RecvStream) -> Result<Bytes, CallError> {
    let mut answer = CappedBody::default();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(unreachable)?;
        let _ = body.flow_control().release_capacity(chunk.len());
        answer.push(chunk).map_err(|()| CallError::TooLarge)?;
    }
    Ok(answer.into_bytes())
}

/// A downstream's answer gathered chunk by chunk, never past [`MAX_ANSWER_BYTES`]. Most answers
/// are one chunk: it is kept as it came, and copied only when a second arrives.
#[derive(Default)]
pub(super) struct CappedBody {
    first: Option<Bytes>,
    rest: Vec<u8>,
}

impl CappedBody {
    /// Adds a chunk; `Err` when the answer would pass the cap (nothing more should be read).
    pub(super) fn push(&mut self, chunk: Bytes) -> Result<(), ()> {
        let held = self.first.as_ref().map_or(0, Bytes::len) + self.rest.len();
        if held + chunk.len() > MAX_ANSWER_BYTES {
            return Err(());
        }
        match self.first.take() {
            None if self.rest.is_empty() => self.first = Some(chunk),
            None => self.rest.extend_from_slice(&chunk),
            Some(head) => {
                self.rest.extend_from_slice(&head);
                self.rest.extend_from_slice(&chunk);
            }
        }
        Ok(())
    }

    pub(super) fn into_bytes(self) -> Bytes {
        self.first.unwrap_or_else(|| Bytes::from(self.rest))
    }
}

/// `Authorization: Basic …` from the URL's user info, percent-decoded as reqwest does.
fn basic_auth(url: &url::Url) -> Result<Option<HeaderValue>, String> {
    if url.username().is_empty() && url.password().is_none() {
        return Ok(None);
    }
    let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
    let user = decode(url.username());
    let password = url.password().map(decode).unwrap_or_default();
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let mut value = HeaderValue::try_from(format!("Basic {token}")).map_err(|_| "unusable user info in the URL")?;
    value.set_sensitive(true);
    Ok(Some(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_become_a_basic_header_and_leave_the_uri() {
        let client = H2cClient::new("http://svc:p%40ss@127.0.0.1:9/run?x=1").expect("valid");
        assert_eq!(client.uri.to_string(), "http://127.0.0.1:9/run?x=1");
        assert_eq!(client.address, "127.0.0.1:9");
        let auth = client.authorization.expect("user info present");
        let expected = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("svc:p@ss"));
        assert_eq!(auth.to_str().unwrap_or_default(), expected);
    }

    #[test]
    fn only_plain_http_urls_are_taken_and_errors_do_not_show_them() {
        let e = H2cClient::new("https://svc:k3y@example.invalid/").err().unwrap_or_default();
        assert!(e.contains("http://") && !e.contains("k3y"), "{e}");
    }
}
