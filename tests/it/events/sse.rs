//! A small Server-Sent Events reader over reqwest's byte stream: frames (`id`, `event`, `data`)
//! with bounded waits, comments counted.

use std::{pin::Pin, time::Duration};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde_json::Value;

#[derive(Debug, Clone, Default)]
pub struct Frame {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

impl Frame {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or(Value::Null)
    }
}

pub struct Sse {
    pub status: u16,
    body: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    buffer: String,
    pub comments: usize,
    pub ended: bool,
}

impl Sse {
    /// `GET {base}/events{query}` with `client`, optionally resuming after `last_id`.
    pub async fn open(client: &reqwest::Client, base: &str, query: &str, last_id: Option<&str>) -> Sse {
        let mut request = client.get(format!("{base}/events{query}"));
        if let Some(id) = last_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = request.send().await.expect("the gateway answers /events");
        let status = response.status().as_u16();
        Sse { status, body: Box::pin(response.bytes_stream()), buffer: String::new(), comments: 0, ended: false }
    }

    /// The next frame, or `None` when the stream ended or nothing came within `limit`.
    pub async fn next(&mut self, limit: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut frame = Frame { event: "message".into(), ..Frame::default() };
                let mut fields = 0;
                for line in block.lines() {
                    if line.starts_with(':') {
                        self.comments += 1;
                        continue;
                    }
                    let (name, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    fields += 1;
                    match name {
                        "id" => frame.id = Some(value.to_owned()),
                        "event" => frame.event = value.to_owned(),
                        "data" => frame.data.push_str(value),
                        _ => {}
                    }
                }
                if fields > 0 {
                    return Some(frame);
                }
            }
            if self.ended {
                return None;
            }
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Ok(Some(Ok(bytes))) => self.buffer.push_str(&String::from_utf8_lossy(&bytes)),
                Ok(Some(Err(_))) | Ok(None) => self.ended = true,
                Err(_) => return None,
            }
        }
    }

    /// Task events until `enough(seen)` holds or `limit` passes; every frame read is returned.
    pub async fn collect(&mut self, limit: Duration, enough: impl Fn(&[Frame]) -> bool) -> Vec<Frame> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut seen = Vec::new();
        while !enough(&seen) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(frame) => seen.push(frame),
                None => break,
            }
        }
        seen
    }
}

/// Each task's statuses in the order their events came, consecutive repeats folded.
pub fn statuses_by_task(frames: &[Frame]) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut by_task: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for f in frames.iter().filter(|f| f.event == "task") {
        let v = f.json();
        let (Some(task), Some(status)) = (v["task_id"].as_str(), v["status"].as_str()) else { continue };
        let list = by_task.entry(task.to_owned()).or_default();
        if list.last().map(String::as_str) != Some(status) {
            list.push(status.to_owned());
        }
    }
    by_task
}

/// Whether every one of `tasks` has a `succeeded` event among `frames`.
pub fn all_succeeded(frames: &[Frame], tasks: &[String]) -> bool {
    let by_task = statuses_by_task(frames);
    tasks.iter().all(|t| by_task.get(t).is_some_and(|s| s.iter().any(|x| x == "succeeded")))
}
