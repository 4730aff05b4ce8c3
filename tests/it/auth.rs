//! Who may do what. The matrix: every documented route (read from the gateway's own OpenAPI
//! document, which the code generates, and checked against the auth layer's route table, so a
//! new route cannot slip by) × {no key, a wrong key, a key of each scope} → 401, 403 or through.
//! Then: a submission's topic and `worker_id` must be the key's; anonymous scopes; open mode;
//! `/metrics`; SIGHUP reloads the keys; cancel, retry and report re-sends are audited; a retry
//! never makes Camunda hear twice about one task.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use serde_json::{Value, json};
use worker_api_gateway::auth::{Access, ROUTES, Scope, hash_secret};

use crate::helpers::{AppOptions, TestApp, body, key_file, spawn_app_with, unique};

const WAIT: Duration = Duration::from_secs(30);

/// A key per scope (`{scope}-key`), the submit key limited to one topic and one worker.
fn scoped_keys() -> String {
    Scope::ALL
        .iter()
        .map(|scope| {
            let s = scope.as_str();
            let limits =
                if *scope == Scope::Submit { "topics = [\"say_hello\"]\nworker_ids = [\"worker-1\"]\n" } else { "" };
            format!(
                "[[keys]]\nid = \"{s}-only\"\nhash = \"sha256:{}\"\nscopes = [\"{s}\"]\n{limits}",
                hash_secret(&format!("{s}-key"))
            )
        })
        .collect()
}

async fn app_with_keys(extra_vars: Vec<(String, String)>) -> TestApp {
    let mut vars = vec![("API_KEYS_FILE".to_owned(), key_file(&scoped_keys()).display().to_string())];
    vars.extend(extra_vars);
    spawn_app_with(AppOptions { vars, ..Default::default() }).await
}

/// Sends `method path` with `key` (none, or a secret) and returns the status.
async fn call(app: &TestApp, method: &str, path: &str, key: Option<&str>) -> u16 {
    let client = reqwest::Client::new();
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("a method");
    let mut request = client.request(method.clone(), app.url(path));
    if let Some(key) = key {
        request = request.header("X-API-Key", key);
    }
    if method == reqwest::Method::POST {
        request = request.json(&body(&unique("m"), "say_hello", json!({})));
    }
    request.send().await.expect("gateway answers").status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_401_403_or_serves_by_key_and_scope() {
    let app = app_with_keys(vec![]).await;
    app.submit(&body("matrix-task", "say_hello", json!({}))).await;
    let (_, doc) = app.get_json("/openapi.json").await;
    let paths = doc["paths"].as_object().cloned().unwrap_or_default();
    let mut seen = Vec::new();
    for (template, ops) in &paths {
        for method in ops.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()).unwrap_or_default() {
            let method = method.to_ascii_uppercase();
            let listed = ROUTES.iter().find(|(m, p, _)| *m == method && p == template);
            let (_, _, access) = listed.unwrap_or_else(|| panic!("{method} {template} is not in the auth route table"));
            seen.push((method.clone(), template.clone()));
            let path = template.replace("{task_id}", "matrix-task");
            let needed = match access {
                Access::Public => None,
                Access::Scope(scope) => Some(*scope),
                Access::Metrics => Some(Scope::Admin),
                // Any key, or none; an unknown key is still refused.
                Access::Identified => {
                    let no_key = call(&app, &method, &path, None).await;
                    let wrong = call(&app, &method, &path, Some("not-a-key")).await;
                    assert_eq!((no_key, wrong), (200, 401), "{method} {path}");
                    for scope in Scope::ALL {
                        let status = call(&app, &method, &path, Some(&format!("{}-key", scope.as_str()))).await;
                        assert_eq!(status, 200, "{method} {path} with a {} key", scope.as_str());
                    }
                    continue;
                }
            };
            let no_key = call(&app, &method, &path, None).await;
            let wrong = call(&app, &method, &path, Some("not-a-key")).await;
            match needed {
                None => assert!(no_key < 400 && wrong < 400, "{method} {path} is public: {no_key} / {wrong}"),
                Some(_) => assert_eq!((no_key, wrong), (401, 401), "{method} {path} without a valid key"),
            }
            for scope in Scope::ALL {
                let status = call(&app, &method, &path, Some(&format!("{}-key", scope.as_str()))).await;
                if needed.is_some_and(|n| n != scope) {
                    assert_eq!(status, 403, "{method} {path} with a {} key", scope.as_str());
                } else {
                    assert!(![401, 403].contains(&status), "{method} {path} with a {} key: {status}", scope.as_str());
                }
            }
        }
    }
    // The table holds nothing the document does not: every route is tried above.
    for (m, p, _) in ROUTES {
        assert!(seen.contains(&(m.to_string(), p.to_string())), "{m} {p} is in the table but not documented");
    }
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_submits_only_to_its_topics_as_its_workers() {
    let app = app_with_keys(vec![]).await;
    let submit = |task: &str, topic: &str, worker: &str| {
        let client = reqwest::Client::new();
        let body = json!({"task_id": task, "worker_id": worker, "topic": topic, "variables": {"name": "x"}});
        let request = client.post(app.url("/tasks/submit")).bearer_auth("submit-key").json(&body);
        async move {
            let r = request.send().await.expect("gateway answers");
            (r.status().as_u16(), r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    assert_eq!(submit("own-1", "say_hello", "worker-1").await.0, 200);
    let (status, v) = submit("own-2", "nova_publicacao", "worker-1").await;
    assert_eq!((status, v["error_code"].as_str()), (403, Some("FORBIDDEN")), "{v}");
    assert!(v["error_message"].as_str().unwrap_or_default().contains("topic"), "{v}");
    let (status, v) = submit("own-3", "say_hello", "someone-else").await;
    assert_eq!(status, 403, "{v}");
    assert!(v["error_message"].as_str().unwrap_or_default().contains("worker_id"), "{v}");
    assert_eq!(app.status("own-2").await.0, 404, "nothing refused was stored");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_scopes_open_mode_and_metrics_auth() {
    let anon = app_with_keys(vec![("ANONYMOUS_SCOPES".into(), "submit".into())]).await;
    assert_eq!(call(&anon, "POST", "/tasks/submit", None).await, 200, "a keyless worker fleet submits");
    assert_eq!(call(&anon, "GET", "/tasks", None).await, 401, "but reads nothing");
    let (_, health) = anon.get_json("/health").await;
    assert_eq!(health["auth"], "keys");
    anon.cleanup().await;

    let open =
        spawn_app_with(AppOptions { vars: vec![("AUTH_MODE".into(), "open".into())], ..Default::default() }).await;
    for (method, path) in [("GET", "/topics"), ("GET", "/metrics"), ("GET", "/tasks"), ("POST", "/tasks/submit")] {
        assert_eq!(call(&open, method, path, None).await, 200, "{method} {path} in open mode");
    }
    assert_eq!(open.get_json("/health").await.1["auth"], "open", "open mode is shown");
    open.cleanup().await;

    let scraper = app_with_keys(vec![("METRICS_AUTH".into(), "none".into())]).await;
    assert_eq!(call(&scraper, "GET", "/metrics", None).await, 200);
    assert_eq!(call(&scraper, "GET", "/topics", None).await, 401);
    scraper.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_key_file_and_a_bad_file_keeps_the_keys_in_use() {
    let path = key_file("");
    let vars = vec![("API_KEYS_FILE".to_owned(), path.display().to_string())];
    let app = spawn_app_with(AppOptions { vars, ..Default::default() }).await;
    assert_eq!(call(&app, "GET", "/tasks", Some("late-key")).await, 401);

    let late = format!("[[keys]]\nid = \"late\"\nhash = \"sha256:{}\"\nscopes = [\"read\"]\n", hash_secret("late-key"));
    let admin = std::fs::read_to_string(&path).expect("key file");
    std::fs::write(&path, format!("{admin}{late}")).expect("rewrite");
    let hup = || std::process::Command::new("kill").args(["-HUP", &std::process::id().to_string()]).status();
    assert!(hup().expect("kill runs").success());
    let deadline = tokio::time::Instant::now() + WAIT;
    while call(&app, "GET", "/tasks", Some("late-key")).await != 200 {
        assert!(tokio::time::Instant::now() < deadline, "the new key never worked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A broken file is refused; the keys in use stay.
    std::fs::write(&path, "[[keys]]\nid = ").expect("rewrite");
    assert!(hup().expect("kill runs").success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(call(&app, "GET", "/tasks", Some("late-key")).await, 200);
    app.cleanup().await;
}

/// A stand-in Camunda whose reports (`complete`, `failure`, …) are answered from `script` in
/// turn (its last answer after); its tasks have retries left and its external task log is empty.
async fn scripted_camunda(script: Vec<u16>) -> (String, Arc<AtomicU32>) {
    use axum::{
        Json, Router,
        extract::State,
        http::StatusCode,
        routing::{get, post},
    };
    let calls = Arc::new(AtomicU32::new(0));
    let state = (calls.clone(), Arc::new(script));
    let app = Router::new()
        .route(
            "/engine-rest/external-task/{id}/{action}",
            post(|State((calls, script)): State<(Arc<AtomicU32>, Arc<Vec<u16>>)>| async move {
                let n = calls.fetch_add(1, Ordering::SeqCst) as usize;
                let code = script.get(n).or(script.last()).copied().unwrap_or(204);
                let body = r#"{"type":"RestException","message":"scripted"}"#;
                (StatusCode::from_u16(code).unwrap_or(StatusCode::NO_CONTENT), if code == 204 { "" } else { body })
            }),
        )
        .route("/engine-rest/external-task/{id}", get(|| async { Json(json!({"id": "x", "retries": 1})) }))
        .route("/engine-rest/history/external-task-log", get(|| async { Json(json!([])) }))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://127.0.0.1:{port}/engine-rest"), calls)
}

async fn wait_report(app: &TestApp, id: &str, state: &str) -> Value {
    let path = format!("/tasks/{id}/status");
    app.wait_for(&format!("report {state}"), WAIT, |v| v["camunda"]["report_state"] == state, &path).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_and_report_resends_keep_camunda_hearing_once_and_are_audited() {
    // The first report is refused (400: report_failed), every later one accepted.
    let (url, calls) = scripted_camunda(vec![400, 204]).await;
    let vars =
        vec![("CAMUNDA_URL".into(), url), ("API_KEYS_FILE".into(), key_file(&scoped_keys()).display().to_string())];
    // A handler that always fails with a business error: the task ends failed (an incident).
    let down = crate::helpers::downstream(vec![422]).await;
    let topic = format!("handler = \"http\"\nurl = \"{}\"\n", down.url);
    let app = spawn_app_with(AppOptions { topics: vec![("refusing".into(), topic)], vars, ..Default::default() }).await;
    let operate = |method: reqwest::Method, path: String| {
        let request = reqwest::Client::new().request(method, app.url(&path)).bearer_auth("operate-key");
        async move {
            let r = request.send().await.expect("gateway answers");
            (r.status().as_u16(), r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (status, v) = app.submit(&body("once-1", "refusing", json!({"name": "A"}))).await;
    assert_eq!(status, 200, "{v}");
    wait_report(&app, "once-1", "report_failed").await;

    // Camunda has no outcome yet: a retry re-runs the task, and its one report lands.
    let (status, v) = operate(reqwest::Method::POST, "/tasks/once-1/retry".into()).await;
    assert_eq!(status, 200, "{v}");
    let done = wait_report(&app, "once-1", "reported").await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // Now it has: a second retry is refused, naming the way out.
    let (status, v) = operate(reqwest::Method::POST, "/tasks/once-1/retry".into()).await;
    assert_eq!(status, 409, "{v}");
    assert!(v["error_message"].as_str().unwrap_or_default().contains("resolve the incident in Camunda"), "{v}");
    assert_eq!(calls.load(Ordering::SeqCst), 2, "Camunda heard once more, not twice");
    let audit = done["audit"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        (audit.len(), &audit[0]["action"], &audit[0]["by"]),
        (1, &json!("retry"), &json!("operate-only")),
        "{done}"
    );

    // A report that failed for good is re-sent by hand, once, and the re-send is audited too.
    let (url, calls) = scripted_camunda(vec![400, 204]).await;
    let vars =
        vec![("CAMUNDA_URL".into(), url), ("API_KEYS_FILE".into(), key_file(&scoped_keys()).display().to_string())];
    let second = spawn_app_with(AppOptions { vars, ..Default::default() }).await;
    second.submit(&body("resend-1", "say_hello", json!({"name": "B"}))).await;
    wait_report(&second, "resend-1", "report_failed").await;
    let r = reqwest::Client::new().post(second.url("/tasks/resend-1/report")).bearer_auth("operate-key").send().await;
    assert_eq!(r.expect("gateway answers").status().as_u16(), 200);
    let done = wait_report(&second, "resend-1", "reported").await;
    assert_eq!((done["attempts"].as_u64(), calls.load(Ordering::SeqCst)), (Some(1), 2), "the handler ran once: {done}");
    assert_eq!(done["audit"][0]["action"], "resend_report", "{done}");
    let r = reqwest::Client::new().post(second.url("/tasks/resend-1/report")).bearer_auth("operate-key").send().await;
    assert_eq!(r.expect("gateway answers").status().as_u16(), 409, "only a failed report can be re-sent");

    app.cleanup().await;
    second.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_records_which_key_did_it() {
    let down = crate::helpers::downstream(vec![503]).await;
    let topic = format!(
        "handler = \"http\"\nurl = \"{}\"\n[retry]\nmax_attempts = 3\ninitial_backoff_ms = 60000\nmax_backoff_ms = 60000\n",
        down.url
    );
    let vars = vec![("API_KEYS_FILE".into(), key_file(&scoped_keys()).display().to_string())];
    let app = spawn_app_with(AppOptions { topics: vec![("waits".into(), topic)], vars, ..Default::default() }).await;
    app.submit(&body("cancel-me", "waits", json!({}))).await;
    app.wait_status("cancel-me", "retrying", WAIT).await;
    let r = reqwest::Client::new().delete(app.url("/tasks/cancel-me")).bearer_auth("operate-key").send().await;
    assert_eq!(r.expect("gateway answers").status().as_u16(), 200);
    let (_, task) = app.status("cancel-me").await;
    assert_eq!(
        (&task["status"], &task["audit"][0]["action"], &task["audit"][0]["by"]),
        (&json!("cancelled"), &json!("cancel"), &json!("operate-only")),
        "{task}"
    );
    assert!(task["audit"][0]["at"].is_string());
    app.cleanup().await;
}
