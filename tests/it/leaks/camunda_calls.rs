//! Ids in Camunda paths and the size of Camunda's answers, seen from a stand-in that records the
//! request target exactly as it arrived. A task id is one percent-encoded path segment in every
//! call; an id of `..` (which the gateway's own `TaskId` accepts: `.` is an id character) is
//! refused before any request, since no encoding survives URL normalisation; an answer over
//! its bound is an error naming Camunda, not a buffer without end.

use std::{collections::HashMap, time::Duration};

use axum::{
    Json,
    body::Body,
    http::{Method, StatusCode},
    response::{IntoResponse, Response},
};
use serde_json::{Map, json};
use worker_api_gateway::{
    camunda::{CamundaClient, CamundaError},
    config::Settings,
    store::ReportState,
    topics::JsonVariables,
};

use super::{StandIn, accepting_engine};
use crate::helpers::{AppOptions, body, spawn_app_with};

const WAIT: Duration = Duration::from_secs(30);

/// A client for `base` built the way the gateway builds it, from settings.
fn client(base: &str) -> CamundaClient {
    let vars = HashMap::from([
        ("CAMUNDA_URL".to_owned(), base.to_owned()),
        // Settings need some access rule; none of them matters to a client.
        ("ANONYMOUS_SCOPES".to_owned(), "read".to_owned()),
    ]);
    let settings = Settings::from_vars(&vars).expect("valid settings");
    let camunda = settings.camunda.as_ref().expect("CAMUNDA_URL is set");
    CamundaClient::new(camunda, &settings.tls).expect("a client")
}

#[tokio::test]
async fn every_call_puts_a_task_id_in_its_path_as_one_encoded_segment() {
    let engine = StandIn::start(accepting_engine).await;
    let camunda = client(&format!("{}/engine-rest?token=t", engine.origin));
    let none = Map::new();

    for id in ["a..b", "x/y", "a;b%2E?c"] {
        let _ = camunda.complete(id, "w", &none, false, JsonVariables::Object).await;
        let _ = camunda.bpmn_error(id, "w", "E1", "m").await;
        let _ = camunda.failure(id, "w", "m", "d", 0, Duration::ZERO).await;
        let _ = camunda.extend_lock(id, "w", Duration::from_secs(1)).await;
        let _ = camunda.unlock(id).await;
        let _ = camunda.get(id).await;
        let _ = camunda.definition_xml(id).await;
        let _ = camunda.fate(id).await;
    }

    let targets: Vec<String> = engine.seen().into_iter().map(|s| s.target).collect();
    let expected = |id: &str, query_id: &str| {
        vec![
            format!("/engine-rest/external-task/{id}/complete?token=t"),
            format!("/engine-rest/external-task/{id}/bpmnError?token=t"),
            format!("/engine-rest/external-task/{id}/failure?token=t"),
            format!("/engine-rest/external-task/{id}/extendLock?token=t"),
            format!("/engine-rest/external-task/{id}/unlock?token=t"),
            format!("/engine-rest/external-task/{id}?token=t"),
            format!("/engine-rest/process-definition/{id}/xml?token=t"),
            format!(
                "/engine-rest/history/external-task-log?token=t&externalTaskId={query_id}&sortBy=timestamp&sortOrder=desc"
            ),
        ]
    };
    let mut all = expected("a..b", "a..b");
    all.extend(expected("x%2Fy", "x%2Fy"));
    all.extend(expected("a%3Bb%252E%3Fc", "a%3Bb%252E%3Fc"));
    assert_eq!(targets, all);
}

#[tokio::test]
async fn a_dot_segment_id_is_refused_without_a_request() {
    let engine = StandIn::start(accepting_engine).await;
    let camunda = client(&format!("{}/engine-rest", engine.origin));

    for id in ["..", "."] {
        let completed = camunda.complete(id, "w", &Map::new(), false, JsonVariables::Object).await;
        assert!(matches!(&completed, Err(CamundaError::Refused(m)) if m.contains("cannot name")), "{completed:?}");
        assert!(matches!(camunda.unlock(id).await, Err(CamundaError::Refused(_))));
        assert!(matches!(camunda.definition_xml(id).await, Err(CamundaError::Refused(_))));
    }
    assert!(engine.seen().is_empty(), "nothing reached Camunda: {:?}", engine.seen());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submitted_task_named_dot_dot_never_reaches_another_camunda_resource() {
    // `..` is a valid TaskId; in report mode its outcome is owed to Camunda.
    let engine = StandIn::start(accepting_engine).await;
    let vars = vec![("CAMUNDA_URL".to_owned(), format!("{}/engine-rest", engine.origin))];
    let app = spawn_app_with(AppOptions { vars, ..Default::default() }).await;
    assert_eq!(app.submit(&body("..", "say_hello", json!({"name": "Ana"}))).await.0, 200);
    assert_eq!(app.submit(&body("a..b", "say_hello", json!({"name": "Bia"}))).await.0, 200);

    let deadline = tokio::time::Instant::now() + WAIT;
    let dots = loop {
        let record = app.status_from_store("..").await;
        if record.camunda.report_state == ReportState::ReportFailed {
            break record;
        }
        assert!(tokio::time::Instant::now() < deadline, "the report of `..` never settled: {record:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    app.wait_for("a..b reported", WAIT, |v| v["camunda"]["report_state"] == "reported", "/tasks/a..b/status").await;

    let error = dots.camunda.last_report_error.unwrap_or_default();
    assert!(error.contains("cannot name a Camunda resource"), "{error}");
    let targets: Vec<String> = engine.seen().into_iter().map(|s| s.target).collect();
    assert!(targets.contains(&"/engine-rest/external-task/a..b/complete".to_owned()), "{targets:?}");
    let stray: Vec<&String> =
        targets.iter().filter(|t| *t != "/engine-rest/engine" && !t.contains("/external-task/a..b")).collect();
    assert!(stray.is_empty(), "only a..b's calls and pings reached Camunda: {stray:?}");
    app.cleanup().await;
}

/// Answers `GET …/external-task/big` with 2 MiB declared, `…/streamed` with 2 MiB sent in
/// chunks without a length, and process definitions `xml-3` / `xml-11` with that many MiB of XML.
fn oversized_engine(_: &Method, path: &str) -> Response {
    let mib = |n: usize| "x".repeat(n * 1024 * 1024);
    match path.rsplit('/').next().unwrap_or_default() {
        "big" => (StatusCode::OK, Json(json!({"id": "big", "errorMessage": mib(2)}))).into_response(),
        "streamed" => {
            let chunks = (0..32).map(|_| Ok::<_, std::io::Error>(vec![b' '; 64 * 1024]));
            Body::from_stream(futures::stream::iter(chunks)).into_response()
        }
        "xml" if path.contains("/xml-3/") => Json(json!({"bpmn20Xml": mib(3)})).into_response(),
        "xml" if path.contains("/xml-11/") => Json(json!({"bpmn20Xml": mib(11)})).into_response(),
        "engine" => Json(json!([{"name": "default"}])).into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

#[tokio::test]
async fn an_answer_over_its_bound_is_an_error_naming_camunda() {
    let engine = StandIn::start(oversized_engine).await;
    let camunda = client(&format!("{}/engine-rest", engine.origin));

    for id in ["big", "streamed"] {
        let answer = camunda.get(id).await;
        assert!(
            matches!(&answer, Err(CamundaError::Unavailable(m)) if m.starts_with("Camunda's answer is larger than 1048576")),
            "{id}: {answer:?}"
        );
    }
    let xml = camunda.definition_xml("xml-3").await.expect("3 MiB of BPMN is under the XML bound");
    assert_eq!(xml.len(), 3 * 1024 * 1024);
    let too_much = camunda.definition_xml("xml-11").await;
    assert!(
        matches!(&too_much, Err(CamundaError::Unavailable(m)) if m.contains("larger than 10485760")),
        "{too_much:?}"
    );
    assert!(camunda.ping().await, "a regular answer is still read");
}
