//! `/metrics` serves the format its `Accept` asks for, labelled as what it is: OpenMetrics for a
//! scraper that asks for it, Prometheus text 0.0.4 otherwise. Both bodies are read by the
//! reference parsers of the Python `prometheus_client` (from the seed workers' venv, which
//! `scripts/services.sh` builds and checks imports it), the 0.0.4 one being the parser that read
//! our counters as untyped when OpenMetrics went out as `text/plain`.

use std::{io::Write, process::Stdio, time::Duration};

use serde_json::{Value, json};

use crate::helpers::{TestApp, body, env, spawn_app};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT_004: &str = "text/plain; version=0.0.4; charset=utf-8";

/// (content type, body) of `/metrics` fetched with `accept` (none: the client's default `*/*`).
async fn scrape(app: &TestApp, accept: Option<&str>) -> (String, String) {
    let mut request = app.client.get(app.url("/metrics"));
    if let Some(accept) = accept {
        request = request.header(reqwest::header::ACCEPT, accept);
    }
    let response = request.send().await.expect("gateway answers");
    assert_eq!(response.status().as_u16(), 200);
    let content_type =
        response.headers().get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    (content_type, response.text().await.unwrap_or_default())
}

/// Every family the Python parser for `format` (`text` or `openmetrics`) reads from `body`, as
/// `{name: {type, samples: [sample names]}}`, or `{"error": why}` when it refuses the body.
fn python_parse(format: &str, body: &str) -> Value {
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families as text
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics
parse = text if sys.argv[1] == "text" else openmetrics
try:
    families = {f.name: {"type": f.type, "samples": sorted({s.name for s in f.samples})}
                for f in parse(sys.stdin.read())}
except Exception as e:
    families = {"error": str(e)}
print(json.dumps(families))
"#;
    let mut child = std::process::Command::new(env("SEED_WORKERS_PYTHON"))
        .args(["-c", SCRIPT, format])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the seed workers' python runs");
    child.stdin.take().expect("piped stdin").write_all(body.as_bytes()).expect("python reads the body");
    let out = child.wait_with_output().expect("python finishes");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("python printed no JSON ({e}): {out:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_in_the_format_accept_asks_for_and_labelled_as_it() {
    let app = spawn_app().await;
    app.submit(&body("metrics-1", "say_hello", json!({"name": "Ada"}))).await;
    app.wait_status("metrics-1", "succeeded", Duration::from_secs(20)).await;

    // What Prometheus itself sends, and a bare request for OpenMetrics.
    let scraper = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,\
                   text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    for accept in [scraper, "application/openmetrics-text"] {
        let (content_type, om) = scrape(&app, Some(accept)).await;
        assert_eq!(content_type, OPENMETRICS, "Accept: {accept}");
        assert!(om.ends_with("# EOF\n"), "{om}");
        assert!(om.contains("# TYPE gateway_task_submits counter\n"), "{om}");
        let families = python_parse("openmetrics", &om);
        assert_eq!(families["gateway_task_submits"]["type"], "counter", "{families}");
        assert_eq!(families["gateway_task_submits"]["samples"], json!(["gateway_task_submits_total"]));
    }

    for accept in [None, Some("text/plain"), Some("text/plain;version=0.0.4;q=0.9,application/openmetrics-text;q=0.2")]
    {
        let (content_type, text) = scrape(&app, accept).await;
        assert_eq!(content_type, TEXT_004, "Accept: {accept:?}");
        assert!(!text.contains("# EOF"), "{text}");
        assert!(!text.contains("# UNIT"), "{text}");
        // Structurally: a counter is typed under the name its samples carry.
        let counters: Vec<&str> =
            text.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter")).collect();
        assert!(counters.contains(&"gateway_task_submits_total"), "{text}");
        for counter in &counters {
            assert!(counter.ends_with("_total"), "counter {counter} is not typed under its samples' name");
        }
        assert!(text.contains(r#"gateway_task_submits_total{topic="say_hello",result="created"} 1"#), "{text}");
        // By the reference 0.0.4 parser: every family holding `_total` samples is a counter.
        let families = python_parse("text", &text);
        assert!(families.get("error").is_none(), "{families}");
        assert_eq!(families["gateway_task_submits"]["type"], "counter", "{families}");
        assert_eq!(families["gateway_task_outcomes"]["samples"], json!(["gateway_task_outcomes_total"]), "{families}");
        for (name, family) in families.as_object().expect("families") {
            let samples = family["samples"].as_array().expect("sample names");
            if samples.iter().any(|s| s.as_str().is_some_and(|s| s.ends_with("_total"))) {
                assert_eq!(family["type"], "counter", "{name} read as {}: {text}", family["type"]);
            }
        }
    }
    app.cleanup().await;
}
