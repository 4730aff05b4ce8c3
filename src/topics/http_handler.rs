//! The `http` handler kind: POST the task to a configured URL and map the answer, with the same
//! table the seed's workers use (2xx success, 400/404/422 business error, 408/429/5xx/timeout/
//! connection error retryable). It never logs the URL's credentials or the response body.
//! HTTP/1.1 and `https://` calls go through reqwest; `http2 = true` on an `http://` URL goes
//! through the lean [`H2cClient`], which holds far less per call in flight. Either way the answer
//! is read up to [`MAX_ANSWER_BYTES`], and a redirect is followed only within the URL's origin
//! ([`redirect_policy`]; the h2c path follows none).

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use serde_json::{Value, json};

use super::{
    h2c::{CallError, CappedBody, H2cClient, MAX_ANSWER_BYTES},
    handler::{Handler, HandlerContext, HandlerError, Variables},
};

/// How the handler reaches its downstream.
enum Transport {
    /// reqwest's pooled client (HTTP/1.1, or HTTP/2 negotiated over TLS).
    Reqwest { client: reqwest::Client, url: String },
    /// One shared HTTP/2 cleartext connection.
    H2c(Box<H2cClient>),
}

pub struct HttpHandler {
    transport: Transport,
    timeout: Duration,
}

impl HttpHandler {
    pub fn new(client: reqwest::Client, url: String, timeout: Duration) -> Self {
        Self { transport: Transport::Reqwest { client, url }, timeout }
    }

    /// A handler calling an `http://` downstream over HTTP/2 cleartext (`http2 = true`).
    pub fn h2c(url: &str, timeout: Duration) -> Result<Self, String> {
        Ok(Self { transport: Transport::H2c(Box::new(H2cClient::new(url)?)), timeout })
    }
}

/// Most redirects followed, all within the origin of the configured URL.
const MAX_REDIRECTS: usize = 5;

/// Why a redirect was not followed; reqwest hands it back as the source of its redirect error.
#[derive(Debug, thiserror::Error)]
enum RedirectRefused {
    #[error("downstream redirected to another origin (scheme, host or port); only same-origin redirects are followed")]
    OtherOrigin,
    #[error("downstream redirected more than {MAX_REDIRECTS} times")]
    TooMany,
}

/// The redirect policy of the clients `http` handlers call through: follow a redirect only to
/// the origin (scheme, host, port) of the URL first called, at most [`MAX_REDIRECTS`] times. A
/// redirect elsewhere would hand the task's variables (a 307/308 re-POSTs them) and whatever the
/// Location asks to a host nobody configured; it fails the task instead, for good, since it will
/// not change by itself.
pub fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        // `previous` starts with the URL first called.
        let origin = attempt.previous().first().map(url::Url::origin);
        if origin.is_some_and(|o| o != attempt.url().origin()) {
            attempt.error(RedirectRefused::OtherOrigin)
        } else if attempt.previous().len() > MAX_REDIRECTS {
            attempt.error(RedirectRefused::TooMany)
        } else {
            attempt.follow()
        }
    })
}

/// What is POSTed: the task, by reference, so the variables are serialized without a copy.
#[derive(serde::Serialize)]
struct Call<'a> {
    task_id: &'a str,
    worker_id: &'a str,
    topic: &'a str,
    attempt: u32,
    variables: &'a Variables,
}

/// The statuses whose body is read: a success's result and a business error's message.
fn wants_body(status: StatusCode) -> bool {
    status.is_success() || matches!(status.as_u16(), 400 | 404 | 422)
}

#[async_trait::async_trait]
impl Handler for HttpHandler {
    async fn handle(&self, ctx: &HandlerContext, input: &Variables) -> Result<Variables, HandlerError> {
        let call = Call {
            task_id: &ctx.task_id,
            worker_id: &ctx.worker_id,
            topic: &ctx.topic,
            attempt: ctx.attempt,
            variables: input,
        };
        let body = serde_json::to_vec(&call)
            .map_err(|e| HandlerError::business("validation", format!("variables cannot be sent as JSON: {e}")))?;
        ctx.step(Some("calling_downstream"), "http_call", "started", None).await;
        let answer = match &self.transport {
            // Boxed so that reqwest's larger state does not size the lean path's future.
            Transport::Reqwest { client, url } => Box::pin(self.via_reqwest(client, url, body)).await?,
            Transport::H2c(client) => {
                match tokio::time::timeout(self.timeout, client.post_json(Bytes::from(body), wants_body)).await {
                    Err(_) => return Err(HandlerError::retryable("downstream timed out")),
                    Ok(Err(CallError::TooLarge)) => {
                        return Err(HandlerError::business("processing", CallError::TooLarge.to_string()));
                    }
                    Ok(Err(e)) => return Err(HandlerError::retryable(e.to_string())),
                    Ok(Ok(answer)) => (answer.status, answer.body),
                }
            }
        };
        let (status, bytes) = answer;
        ctx.step(Some("downstream_answered"), "http_call", &status.as_u16().to_string(), None).await;
        map_answer(status, &bytes)
    }
}

impl HttpHandler {
    /// The call through reqwest: the status and, when wanted, the body.
    async fn via_reqwest(
        &self,
        client: &reqwest::Client,
        url: &str,
        body: Vec<u8>,
    ) -> Result<(StatusCode, Bytes), HandlerError> {
        let request =
            client.post(url).timeout(self.timeout).header(http::header::CONTENT_TYPE, "application/json").body(body);
        let request = crate::trace::propagate(request);
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) if e.is_timeout() => return Err(HandlerError::retryable("downstream timed out")),
            Err(e) if e.is_redirect() => return Err(HandlerError::business("processing", redirect_refused(&e))),
            // host:port and the reason (a TLS handshake's too), never the URL.
            Err(e) => {
                return Err(HandlerError::retryable(format!(
                    "downstream unreachable: {}",
                    crate::tls::request_error(&e)
                )));
            }
        };
        let status = response.status();
        if !wants_body(status) {
            return Ok((status, Bytes::new()));
        }
        match read_capped(response).await {
            Ok(bytes) => Ok((status, bytes)),
            Err(None) => Err(HandlerError::business("processing", CallError::TooLarge.to_string())),
            // A business error's message is a nicety; without it the status still decides.
            Err(Some(_)) if !status.is_success() => Ok((status, Bytes::new())),
            Err(Some(e)) => Err(HandlerError::retryable(format!("reading downstream answer: {}", e.without_url()))),
        }
    }
}

/// Why a redirect was not followed, in words that never hold the URL (the Location may carry
/// secrets as much as the configured URL does).
fn redirect_refused(error: &reqwest::Error) -> String {
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        if let Some(refused) = e.downcast_ref::<RedirectRefused>() {
            return refused.to_string();
        }
        source = e.source();
    }
    "downstream redirect not followed".to_owned()
}

/// The answer's body up to [`MAX_ANSWER_BYTES`]: `Err(None)` when it is larger (as declared or
/// as it arrives; the rest is not read), `Err(Some(_))` when reading it failed.
async fn read_capped(mut response: reqwest::Response) -> Result<Bytes, Option<reqwest::Error>> {
    if response.content_length().is_some_and(|n| n > MAX_ANSWER_BYTES as u64) {
        return Err(None);
    }
    let mut answer = CappedBody::default();
    while let Some(chunk) = response.chunk().await? {
        answer.push(chunk).map_err(|()| None)?;
    }
    Ok(answer.into_bytes())
}

/// The answer table: what a downstream's status and body mean for the task.
fn map_answer(status: StatusCode, bytes: &[u8]) -> Result<Variables, HandlerError> {
    match status.as_u16() {
        200..=299 => match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(Value::Null) | Err(_) if bytes.iter().all(u8::is_ascii_whitespace) => Ok(Variables::new()),
            Ok(other) => Ok(json!({ "result": other }).as_object().cloned().unwrap_or_default()),
            Err(_) => Err(HandlerError::business("processing", "downstream answered 2xx with a body that is not JSON")),
        },
        400 | 404 | 422 => {
            let message = business_message(bytes).unwrap_or_else(|| format!("downstream answered {status}"));
            let kind = if status == StatusCode::NOT_FOUND { "not_found" } else { "validation" };
            Err(HandlerError::business(kind, message))
        }
        408 | 429 | 500..=599 => Err(HandlerError::retryable(format!("downstream answered {status}"))),
        _ => Err(HandlerError::business("processing", format!("downstream answered {status}"))),
    }
}

/// A downstream's own error message, when its body carries one in a usual field.
fn business_message(bytes: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(bytes).ok()?;
    ["error_message", "message", "error", "detail"]
        .iter()
        .find_map(|k| v.get(*k).and_then(Value::as_str))
        .map(|s| s.chars().take(500).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_table_maps_statuses_and_bodies() {
        let ok = map_answer(StatusCode::OK, br#"{"a":1}"#).expect("2xx object");
        assert_eq!(ok.get("a"), Some(&json!(1)));
        assert_eq!(map_answer(StatusCode::NO_CONTENT, b""), Ok(Variables::new()));
        let wrapped = map_answer(StatusCode::OK, b"[1]").expect("2xx non-object");
        assert_eq!(wrapped.get("result"), Some(&json!([1])));
        let business = map_answer(StatusCode::UNPROCESSABLE_ENTITY, br#"{"message":"no such case"}"#);
        assert_eq!(business, Err(HandlerError::business("validation", "no such case")));
        assert!(matches!(map_answer(StatusCode::SERVICE_UNAVAILABLE, b""), Err(HandlerError::Retryable { .. })));
        assert!(matches!(map_answer(StatusCode::OK, b"<html>"), Err(HandlerError::Business { .. })));
    }
}
