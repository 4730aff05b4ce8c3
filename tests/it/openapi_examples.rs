//! Swagger UI's "Try it out" works as shipped: every operation that takes a body documents an
//! example, and the examples `/openapi.json` carries — request bodies, path parameters and the
//! submit's answer — are sent as they are to a running gateway and succeed.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::spawn_app;

const WAIT: Duration = Duration::from_secs(20);

/// The example bodies of one media type, in the order Swagger UI offers them (`example`, or
/// `examples` by name, the first prefilled).
fn examples(media: &Value) -> Vec<Value> {
    if let Some(example) = media.get("example") {
        return vec![example.clone()];
    }
    let named = media.get("examples").and_then(Value::as_object);
    named.into_iter().flat_map(|m| m.values()).filter_map(|e| e.get("value").cloned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_example_in_the_openapi_document_works_as_sent() {
    let app = spawn_app().await;
    let (status, doc) = app.get_json("/openapi.json").await;
    assert_eq!(status, 200);
    let paths = doc["paths"].as_object().expect("paths");

    // Every operation taking a body has an example for each of its media types.
    let mut with_body = 0;
    for (path, ops) in paths {
        for (method, op) in ops.as_object().expect("operations") {
            let Some(content) = op.pointer("/requestBody/content").and_then(Value::as_object) else { continue };
            with_body += 1;
            for (media_type, media) in content {
                assert!(!examples(media).is_empty(), "{method} {path} ({media_type}) has no example body");
            }
        }
    }
    assert!(with_body >= 1, "no operation takes a body: {doc}");

    // The submit's examples, first the one Swagger UI prefills, as sent by "Try it out".
    let submit = &doc["paths"]["/tasks/submit"]["post"];
    let bodies = examples(&submit["requestBody"]["content"]["application/json"]);
    assert_eq!(bodies[0]["topic"], "say_hello", "the prefilled example is the simplest: {bodies:?}");
    let promised = submit["responses"]["200"]["content"]["application/json"]["example"].clone();
    for (i, body) in bodies.iter().enumerate() {
        let response = app.client.post(app.url("/tasks/submit")).json(body).send().await.expect("gateway answers");
        let status = response.status().as_u16();
        let answer: Value = response.json().await.unwrap_or_default();
        assert_eq!(status, 200, "example {body} was refused: {answer}");
        if i == 0 {
            assert_eq!(answer, promised, "the documented answer is the one given");
        }
        let task_id = body["task_id"].as_str().expect("example task_id");
        app.wait_status(task_id, "succeeded", WAIT).await;
    }

    // Path parameters carry an example, and the status example names the submitted task.
    for (path, ops) in paths {
        for (method, op) in ops.as_object().expect("operations") {
            let params = op["parameters"].as_array().into_iter().flatten();
            for param in params.filter(|p| p["in"] == "path") {
                assert!(
                    param.get("example").is_some(),
                    "{method} {path}: path parameter {} has no example",
                    param["name"]
                );
            }
        }
    }
    let status_op = &doc["paths"]["/tasks/{task_id}/status"]["get"];
    let task_id = status_op["parameters"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "task_id"))
        .and_then(|p| p["example"].as_str())
        .expect("a task_id example");
    let (status, task) = app.status(task_id).await;
    assert_eq!((status, task["status"].as_str()), (200, Some("succeeded")), "{task}");
    app.cleanup().await;
}
