//! Every class of bad input gets the shared error body with the right status, and none of it
//! reaches storage.

use serde_json::{Value, json};

use crate::helpers::{AppOptions, TestApp, body, spawn_app, spawn_app_with};

/// Asserts the error shape and that the task id was never stored.
async fn assert_rejected(app: &TestApp, status: u16, code: &str, answer: (u16, Value), task_id: Option<&str>) -> Value {
    let (got, v) = answer;
    assert_eq!(got, status, "answer: {v}");
    assert_eq!(v["status"], "error", "{v}");
    assert_eq!(v["error_code"], code, "{v}");
    assert_eq!(v["path"], "/tasks/submit", "{v}");
    assert!(v["error_message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(v["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')), "{v}");
    assert_eq!(v["retry_allowed"], false, "{v}");
    if let Some(id) = task_id {
        assert_eq!(app.status(id).await.0, 404, "rejected task {id} must not be stored");
    }
    v
}

async fn post_raw(app: &TestApp, content_type: Option<&str>, body: impl Into<reqwest::Body>) -> (u16, Value) {
    let mut req = app.client.post(app.url("/tasks/submit")).body(body);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let r = req.send().await.expect("gateway answers");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn fields(v: &Value) -> Vec<String> {
    v["details"]
        .as_array()
        .map(|d| d.iter().filter_map(|e| e["field"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_wrong_type_and_oversized_bodies_are_refused() {
    let app =
        spawn_app_with(AppOptions { vars: vec![("MAX_BODY_BYTES".into(), "4096".into())], ..Default::default() }).await;

    let r = post_raw(&app, Some("application/json"), r#"{"task_id": "bad1", "worker_id": "#).await;
    let v = assert_rejected(&app, 400, "VALIDATION_ERROR", r, Some("bad1")).await;
    assert!(v["error_message"].as_str().unwrap_or("").contains("malformed JSON"), "{v}");

    let good = body("bad2", "say_hello", json!({})).to_string();
    let r = post_raw(&app, Some("text/plain"), good.clone()).await;
    assert_rejected(&app, 415, "UNSUPPORTED_MEDIA_TYPE", r, Some("bad2")).await;
    let r = post_raw(&app, None, good).await;
    assert_rejected(&app, 415, "UNSUPPORTED_MEDIA_TYPE", r, Some("bad2")).await;

    let big = body("bad3", "say_hello", json!({"name": "x".repeat(5000)})).to_string();
    let r = post_raw(&app, Some("application/json"), big).await;
    assert_rejected(&app, 413, "PAYLOAD_TOO_LARGE", r, Some("bad3")).await;

    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_and_mistyped_fields_are_each_listed() {
    let app = spawn_app().await;

    let r = app.submit(&json!({"task_id": "bad4"})).await;
    let v = assert_rejected(&app, 422, "VALIDATION_ERROR", r, Some("bad4")).await;
    assert_eq!(fields(&v), ["worker_id", "topic"]);

    let r = app.submit(&json!({"task_id": 17, "worker_id": ["w"], "topic": "say_hello", "variables": "x"})).await;
    let v = assert_rejected(&app, 422, "VALIDATION_ERROR", r, None).await;
    assert_eq!(fields(&v), ["task_id", "worker_id", "variables"]);

    let r = app.submit(&json!(["not", "an", "object"])).await;
    assert_rejected(&app, 422, "VALIDATION_ERROR", r, None).await;

    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_outside_length_or_character_limits_are_refused() {
    let app = spawn_app().await;

    let long = "a".repeat(129);
    let r = app.submit(&body(&long, "say_hello", json!({}))).await;
    let v = assert_rejected(&app, 422, "VALIDATION_ERROR", r, None).await;
    assert_eq!(fields(&v), ["task_id"]);

    let r = app.submit(&json!({"task_id": "has space", "worker_id": "w/1", "topic": "Say Hello"})).await;
    let v = assert_rejected(&app, 422, "VALIDATION_ERROR", r, None).await;
    assert_eq!(fields(&v), ["task_id", "worker_id", "topic"]);

    let r = app.submit(&json!({"task_id": "", "worker_id": "w", "topic": "say_hello"})).await;
    assert_rejected(&app, 422, "VALIDATION_ERROR", r, None).await;

    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_topic_is_refused_naming_the_registered_ones() {
    let app = spawn_app().await;
    let r = app.submit(&body("bad5", "no_such_topic", json!({}))).await;
    let v = assert_rejected(&app, 422, "VALIDATION_ERROR", r, Some("bad5")).await;
    let message = v["error_message"].as_str().unwrap_or("");
    assert!(
        message.contains("no_such_topic") && message.contains("say_hello") && message.contains("nova_publicacao"),
        "{v}"
    );
    assert_eq!(fields(&v), ["topic"]);

    // A topic's required variables are checked at the edge too.
    let r = app.submit(&body("bad6", "nova_publicacao", json!({"numero_processo": "1"}))).await;
    let v = assert_rejected(&app, 422, "VALIDATION_ERROR", r, Some("bad6")).await;
    assert_eq!(fields(&v), ["variables.data_publicacao", "variables.texto_publicacao", "variables.fonte"]);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variable_count_depth_length_and_names_are_limited() {
    let app = spawn_app_with(AppOptions {
        vars: vec![
            ("MAX_VARIABLES".into(), "5".into()),
            ("MAX_VARIABLE_DEPTH".into(), "3".into()),
            ("MAX_STRING_LENGTH".into(), "10".into()),
        ],
        ..Default::default()
    })
    .await;

    let many: serde_json::Map<String, Value> = (0..6).map(|i| (format!("v{i}"), json!(i))).collect();
    let r = app.submit(&body("bad7", "say_hello", Value::Object(many))).await;
    let v = assert_rejected(&app, 422, "VALIDATION_ERROR", r, Some("bad7")).await;
    assert_eq!(fields(&v), ["variables"]);

    let r = app.submit(&body("bad8", "say_hello", json!({"deep": {"a": {"b": {"c": {"d": 1}}}}}))).await;
    let v = assert_rejected(&app, 422, "VALIDATION_ERROR", r, Some("bad8")).await;
    assert_eq!(fields(&v), ["variables.deep.a.b.c"]);

    let r = app.submit(&body("bad9", "say_hello", json!({"name": "01234567890"}))).await;
    let v = assert_rejected(&app, 422, "VALIDATION_ERROR", r, Some("bad9")).await;
    assert_eq!(fields(&v), ["variables.name"]);

    let r = app
        .submit(&body("bad10", "say_hello", json!({"$where": 1, "a.b": 2, "ok": {"nul\u{0}": 3}, "list": [{"$x": 1}]})))
        .await;
    let v = assert_rejected(&app, 422, "VALIDATION_ERROR", r, Some("bad10")).await;
    let mut got = fields(&v);
    got.sort();
    assert_eq!(got, ["variables.$where", "variables.a.b", "variables.list[0].$x", "variables.ok.nul\u{0}"]);

    // At the limits exactly, the same shapes are accepted.
    let r = app.submit(&body("ok1", "say_hello", json!({"name": "0123456789", "deep": {"a": {"b": 1}}}))).await;
    assert_eq!(r.0, 200, "{}", r.1);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_methods_and_tasks_answer_with_the_error_body() {
    let app = spawn_app().await;
    let (status, v) = app.get_json("/no/such/route").await;
    assert_eq!((status, v["error_code"].as_str()), (404, Some("NOT_FOUND")), "{v}");
    assert_eq!(v["path"], "/no/such/route");

    let (status, v) = app.status("never-submitted").await;
    assert_eq!((status, v["error_code"].as_str()), (404, Some("NOT_FOUND")), "{v}");

    let r = app.client.put(app.url("/tasks/submit")).send().await.expect("answers");
    assert_eq!(r.status().as_u16(), 405);
    let v: Value = r.json().await.unwrap_or(Value::Null);
    assert_eq!(v["error_code"], "METHOD_NOT_ALLOWED", "{v}");

    let (status, v) = app.get_json("/tasks?limit=0&status=bogus&cursor=zzz").await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(fields(&v), ["status", "limit", "cursor"]);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_invalid_submissions_recorded_the_seed_worker_gets_200_and_reads_why_in_the_status() {
    let app = spawn_app_with(AppOptions {
        vars: vec![
            ("INVALID_SUBMISSIONS".into(), "record".into()),
            ("STATUS_LABELS".into(), "seed".into()),
            ("MAX_VARIABLES".into(), "2".into()),
        ],
        ..Default::default()
    })
    .await;

    // Unknown topic, missing required variables, a limit: each answered 200 and stored failed.
    let cases = [
        ("rec-topic", "no_such_topic", json!({}), "topic"),
        ("rec-required", "nova_publicacao", json!({"numero_processo": "1"}), "variables.data_publicacao"),
        ("rec-limit", "say_hello", json!({"a": 1, "b": 2, "c": 3}), "at most 2 variables"),
    ];
    for (id, topic, variables, why) in &cases {
        let (status, v) = app.submit(&body(id, topic, variables.clone())).await;
        assert_eq!((status, v["status"].as_str(), v["created"].as_bool()), (200, Some("submitted"), Some(true)), "{v}");
        let (_, task) = app.status(id).await;
        assert_eq!(task["status"], "erro", "{task}");
        assert_eq!(task["metadata"]["error_code"], "validation");
        let message = task["error_message"].as_str().unwrap_or_default();
        assert!(message.starts_with("invalid submission: ") && message.contains(why), "{message}");
        assert_eq!(task["attempts"], 0, "nothing ran");
    }
    // Idempotent like any submission; the recorded task keeps its variables when they were valid.
    let (status, v) = app.submit(&body("rec-required", "nova_publicacao", json!({"numero_processo": "1"}))).await;
    assert_eq!((status, v["created"].as_bool()), (200, Some(false)), "{v}");
    let stored = app.status_from_store("rec-required").await;
    assert_eq!(stored.variables.get("numero_processo"), Some(&json!("1")));
    // A conflict is still a conflict.
    let (status, v) = app.submit(&body("rec-required", "nova_publicacao", json!({"numero_processo": "2"}))).await;
    assert_eq!((status, v["error_code"].as_str()), (409, Some("CONFLICT")), "{v}");
    // Without a usable task id there is nothing to record: the usual 422.
    let (status, _) = app.submit(&body("bad id with spaces", "say_hello", json!({}))).await;
    assert_eq!(status, 422);
    app.cleanup().await;
}
