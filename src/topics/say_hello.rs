//! `say_hello`, as the seed had it (minus its artificial sleep): greets `name`, default "World".

use serde_json::{Value, json};

use super::handler::{Handler, HandlerContext, HandlerError, Variables};

pub struct SayHello;

#[async_trait::async_trait]
impl Handler for SayHello {
    async fn handle(&self, ctx: &HandlerContext, input: &Variables) -> Result<Variables, HandlerError> {
        let name = match input.get("name") {
            None | Some(Value::Null) => "World".to_owned(),
            Some(Value::String(s)) if s.trim().is_empty() => "World".to_owned(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
        };
        ctx.step(Some("greeting"), "build_greeting", "completed", None).await;
        let out = json!({
            "greeting": format!("Hello, {name}!"),
            "processed_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "worker_id": ctx.worker_id,
            "original_name": input.get("name").cloned().unwrap_or(Value::Null),
        });
        Ok(out.as_object().cloned().unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::topics::MemoryProgress;

    fn ctx(progress: Arc<MemoryProgress>) -> HandlerContext {
        HandlerContext::new("t1".into(), "w1".into(), "say_hello".into(), 1, progress)
    }

    #[tokio::test]
    async fn greets_by_name_and_defaults_to_world() {
        let progress = Arc::new(MemoryProgress::default());
        let mut input = Variables::new();
        input.insert("name".into(), json!("Ana"));
        let out = SayHello.handle(&ctx(progress.clone()), &input).await;
        let out = out.expect("say_hello never fails");
        assert_eq!(out["greeting"], "Hello, Ana!");
        assert_eq!(out["worker_id"], "w1");
        assert_eq!(out["original_name"], "Ana");
        let out = SayHello.handle(&ctx(progress.clone()), &Variables::new()).await;
        assert_eq!(out.map(|o| o["greeting"].clone()).ok(), Some(json!("Hello, World!")));
        assert_eq!(progress.0.lock().map(|v| v.len()).unwrap_or(0), 2);
    }
}
