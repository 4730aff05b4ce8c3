//! The dashboard in a real browser (tests/ui/dashboard.py: Debian's chromium driven by Selenium):
//! sign-in, live rows, a failed task's timeline and retry, a cancel, a read key without actions,
//! a phone-sized page, no console errors. Its screenshots land in `target/ui-screenshots/`
//! (the README's pictures are copies of two of them). Also the files' caching and `whoami`.

use std::{path::PathBuf, time::Duration};

use crate::helpers::{AppOptions, TEST_KEY, downstream, downstream_with, env, key_file, spawn_app_with};

const READ_KEY: &str = "ui-read-0c2e4a6b8d9f1e3a5c7b9d0f2a4c6e8b";

fn http_topic(url: &str, max_attempts: u32, concurrency: u32) -> String {
    format!(
        "handler = \"http\"\nurl = \"{url}\"\ntimeout_seconds = 60\nconcurrency = {concurrency}\n\n[retry]\nmax_attempts = {max_attempts}\ninitial_backoff_ms = 100\nmax_backoff_ms = 400\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_works_in_a_real_browser() {
    // ui_work: 1.5 s a task, one at a time; ui_flaky: a 400 (a business error) then a 200;
    // ui_slow: 60 s a task, one at a time, so a second one stays queued.
    let work = downstream_with(vec![200], Duration::from_millis(1500), None).await;
    let flaky = downstream(vec![400, 200]).await;
    let slow = downstream_with(vec![200], Duration::from_secs(60), None).await;
    let reader = format!(
        "[[keys]]\nid = \"ui-reader\"\nhash = \"sha256:{}\"\nscopes = [\"read\"]\n",
        worker_api_gateway::auth::hash_secret(READ_KEY)
    );
    let app = spawn_app_with(AppOptions {
        topics: vec![
            ("ui_work".into(), http_topic(&work.url, 1, 1)),
            ("ui_flaky".into(), http_topic(&flaky.url, 3, 1)),
            ("ui_slow".into(), http_topic(&slow.url, 1, 1)),
        ],
        vars: vec![("API_KEYS_FILE".into(), key_file(&reader).display().to_string())],
        ..Default::default()
    })
    .await;
    let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/ui-screenshots");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/ui/dashboard.py");
    let run = tokio::process::Command::new(env("UI_TEST_PYTHON"))
        .arg(&script)
        .env("BASE_URL", &app.address)
        .env("OPERATE_KEY", TEST_KEY)
        .env("READ_KEY", READ_KEY)
        .env("SHOTS", &shots)
        .kill_on_drop(true)
        .output();
    let out =
        tokio::time::timeout(Duration::from_secs(240), run).await.expect("the browser run ends").expect("python runs");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the browser checks failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}");
    assert!(stdout.contains("dashboard checks passed"), "{stdout}");
    for name in ["overview.png", "task-timeline.png", "tasks-phone.png"] {
        let size = std::fs::metadata(shots.join(name)).map(|m| m.len()).unwrap_or(0);
        assert!(size > 10_000, "{name}: {size} bytes");
    }
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboards_files_are_public_revalidated_and_whoami_names_the_key() {
    let app = spawn_app_with(AppOptions::default()).await;
    let anonymous = reqwest::Client::new();
    let page = anonymous.get(app.url("/ui")).send().await.expect("answers");
    assert_eq!(page.status().as_u16(), 200);
    assert!(page.headers()["content-type"].to_str().expect("ascii").starts_with("text/html"));
    assert_eq!(page.headers()["cache-control"], "no-cache");
    let etag = page.headers()["etag"].clone();
    let again = anonymous.get(app.url("/ui")).header("if-none-match", etag).send().await.expect("answers");
    assert_eq!(again.status().as_u16(), 304);
    let script = anonymous.get(app.url("/ui/app.js")).send().await.expect("answers");
    assert!(script.headers()["content-type"].to_str().expect("ascii").starts_with("text/javascript"));
    assert!(script.text().await.expect("body").contains("/events"));

    let me: serde_json::Value =
        app.client.get(app.url("/auth/whoami")).send().await.expect("answers").json().await.expect("json");
    assert_eq!(me["key_id"], "it-admin");
    assert_eq!(me["scopes"], serde_json::json!(["submit", "read", "operate", "admin"]));
    let unknown = anonymous.get(app.url("/auth/whoami")).bearer_auth("not-a-key").send().await.expect("answers");
    assert_eq!(unknown.status().as_u16(), 401);
    let nobody: serde_json::Value =
        anonymous.get(app.url("/auth/whoami")).send().await.expect("answers").json().await.expect("json");
    assert_eq!(nobody["key_id"], serde_json::Value::Null);
    app.cleanup().await;
}
