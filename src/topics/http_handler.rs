//! The `http` handler kind: POST the task to a configured URL and map the answer, with the same
//! table the seed's workers use (2xx success, 400/404/422 business error, 408/429/5xx/timeout/
//! connection error retryable). It never logs the URL's credentials or the response body.

use std::time::Duration;

use serde_json::{Value, json};

use super::handler::{Handler, HandlerContext, HandlerError, Variables};

pub struct HttpHandler {
    client: reqwest::Client,
    url: String,
    timeout: Duration,
}

impl HttpHandler {
    pub fn new(client: reqwest::Client, url: String, timeout: Duration) -> Self {
        Self { client, url, timeout }
    }
}

#[async_trait::async_trait]
impl Handler for HttpHandler {
    async fn handle(&self, ctx: &HandlerContext, input: &Variables) -> Result<Variables, HandlerError> {
        let body = json!({
            "task_id": ctx.task_id,
            "worker_id": ctx.worker_id,
            "topic": ctx.topic,
            "attempt": ctx.attempt,
            "variables": input,
        });
        ctx.step(Some("calling_downstream"), "http_call", "started", None).await;
        let answer = self.client.post(&self.url).timeout(self.timeout).json(&body).send().await;
        let response = match answer {
            Ok(r) => r,
            Err(e) if e.is_timeout() => return Err(HandlerError::retryable("downstream timed out")),
            Err(e) => return Err(HandlerError::retryable(format!("downstream unreachable: {}", e.without_url()))),
        };
        let status = response.status();
        ctx.step(Some("downstream_answered"), "http_call", &status.as_u16().to_string(), None).await;
        match status.as_u16() {
            200..=299 => {
                let bytes = response
                    .bytes()
                    .await
                    .map_err(|e| HandlerError::retryable(format!("reading downstream answer: {}", e.without_url())))?;
                match serde_json::from_slice::<Value>(&bytes) {
                    Ok(Value::Object(map)) => Ok(map),
                    Ok(Value::Null) | Err(_) if bytes.iter().all(u8::is_ascii_whitespace) => Ok(Variables::new()),
                    Ok(other) => Ok(json!({ "result": other }).as_object().cloned().unwrap_or_default()),
                    Err(_) => Err(HandlerError::business(
                        "INVALID_RESPONSE",
                        "downstream answered 2xx with a body that is not JSON",
                    )),
                }
            }
            400 | 404 | 422 => {
                let text = response.text().await.unwrap_or_default();
                let message = business_message(&text).unwrap_or_else(|| format!("downstream answered {status}"));
                Err(HandlerError::business(format!("HTTP_{}", status.as_u16()), message))
            }
            408 | 429 | 500..=599 => Err(HandlerError::retryable(format!("downstream answered {status}"))),
            _ => Err(HandlerError::business(
                format!("HTTP_{}", status.as_u16()),
                format!("downstream answered {status}"),
            )),
        }
    }
}

/// A downstream's own error message, when its body carries one in a usual field.
fn business_message(text: &str) -> Option<String> {
    let v: Value = serde_json::from_str(text).ok()?;
    ["error_message", "message", "error", "detail"]
        .iter()
        .find_map(|k| v.get(*k).and_then(Value::as_str))
        .map(|s| s.chars().take(500).collect())
}
