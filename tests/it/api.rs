//! The HTTP contract end to end: submit → succeeded, idempotency, listing and statistics, the
//! OpenAPI document, metrics, seed labels, and submissions published straight to the exchange.

use std::time::Duration;

use futures::future::join_all;
use serde_json::json;

use crate::helpers::{AppOptions, body, env, spawn_app, spawn_app_with};

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn say_hello_is_processed_and_its_result_shown() {
    let app = spawn_app().await;
    let (status, v) = app.submit(&body("hello-1", "say_hello", json!({"name": "Ana"}))).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v,
        json!({"status": "submitted", "task_id": "hello-1", "message": "Task submitted successfully", "created": true})
    );

    let task = app.wait_status("hello-1", "succeeded", WAIT).await;
    assert_eq!(task["result"]["greeting"], "Hello, Ana!");
    assert_eq!(task["result"]["original_name"], "Ana");
    assert_eq!(task["result"]["worker_id"], "worker-1");
    assert_eq!(task["attempts"], 1);
    assert_eq!(task["worker_id"], "worker-1");
    assert!(task["timestamps"]["completed_at"].is_string(), "{task}");
    assert!(task["metadata"]["processing_time_ms"].is_number(), "{task}");
    assert_eq!(task["metadata"]["processing_steps"][0]["step"], "build_greeting");
    assert_eq!(task["camunda"]["report_state"], "not_applicable");

    let (_, root) = app.get_json("/").await;
    assert_eq!(root["status"], "running");
    let (status, health) = app.get_json("/health").await;
    assert_eq!((status, health["status"].as_str()), (200, Some("healthy")), "{health}");
    assert_eq!(app.get("/live").await.status().as_u16(), 200);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubmitting_the_same_task_is_idempotent_and_a_different_body_conflicts() {
    let app = spawn_app().await;
    let original = body("idem-1", "say_hello", json!({"name": "Bo"}));
    assert_eq!(app.submit(&original).await.1["created"], true);
    app.wait_status("idem-1", "succeeded", WAIT).await;

    let (status, v) = app.submit(&original).await;
    assert_eq!((status, v["created"].clone()), (200, json!(false)), "{v}");

    let (status, v) = app.submit(&body("idem-1", "say_hello", json!({"name": "Other"}))).await;
    assert_eq!((status, v["error_code"].as_str()), (409, Some("CONFLICT")), "{v}");

    let task = app.status("idem-1").await.1;
    assert_eq!(task["result"]["greeting"], "Hello, Bo!", "the original is untouched");
    assert_eq!(task["attempts"], 1, "the resubmit did not run the handler again");
    let metrics = app.get("/metrics").await.text().await.unwrap_or_default();
    assert!(metrics.contains(r#"gateway_task_submits_total{topic="say_hello",result="created"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"gateway_task_submits_total{topic="say_hello",result="existing"} 1"#), "{metrics}");
    // Three submissions, one after another: three intake batches of one, each timed.
    assert!(metrics.contains("gateway_intake_batch_size_sum 3.0\ngateway_intake_batch_size_count 3\n"), "{metrics}");
    assert!(metrics.contains("gateway_intake_batch_seconds_count 3\n"), "{metrics}");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_identical_submits_make_one_task_and_one_run() {
    let app = spawn_app().await;
    let submission = body("race-1", "say_hello", json!({"name": "Race"}));
    let answers = join_all((0..50).map(|_| app.submit(&submission))).await;
    assert!(answers.iter().all(|(s, _)| *s == 200), "every answer is 200: {answers:?}");
    let created = answers.iter().filter(|(_, v)| v["created"] == true).count();
    assert_eq!(created, 1, "exactly one submit created the task");

    app.wait_status("race-1", "succeeded", WAIT).await;
    let count = app.mongo.collection::<bson::Document>("tasks").count_documents(bson::doc! {}).await.expect("count");
    assert_eq!(count, 1);
    // One publish, one run: a second delivery would have shown as a skipped claim, not a second attempt,
    // so count the outcome metric too.
    let metrics = app.get("/metrics").await.text().await.unwrap_or_default();
    assert!(metrics.contains(r#"gateway_task_outcomes_total{topic="say_hello",outcome="succeeded"} 1"#), "{metrics}");
    assert_eq!(app.status("race-1").await.1["attempts"], 1);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_tasks_succeed_and_statistics_agree_with_the_list() {
    let app = spawn_app().await;
    let ids: Vec<String> = (0..200).map(|i| format!("bulk-{i:03}")).collect();
    for chunk in ids.chunks(20) {
        let bodies: Vec<_> = chunk.iter().map(|id| body(id, "say_hello", json!({"name": id}))).collect();
        let answers = join_all(bodies.iter().map(|b| app.submit(b))).await;
        assert!(answers.iter().all(|(s, _)| *s == 200), "{answers:?}");
    }
    app.wait_for(
        "200 tasks to succeed",
        Duration::from_secs(90),
        |s| s["by_status"]["succeeded"] == 200,
        "/tasks/statistics",
    )
    .await;

    // Walk the list with cursor pagination: every task once, newest first.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/tasks?status=succeeded&topic=say_hello&limit=64&cursor={c}"),
            None => "/tasks?status=succeeded&topic=say_hello&limit=64".to_owned(),
        };
        let (status, page) = app.get_json(&path).await;
        assert_eq!(status, 200, "{page}");
        for t in page["tasks"].as_array().expect("tasks array") {
            assert_eq!(t["result"]["greeting"], format!("Hello, {}!", t["task_id"].as_str().unwrap_or("")));
            seen.push(t["task_id"].as_str().unwrap_or("").to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, ids, "each task listed exactly once");

    let (_, stats) = app.get_json("/tasks/statistics").await;
    assert_eq!(stats["total_tasks"], 200);
    assert_eq!(stats["by_topic"]["say_hello"], 200);
    assert_eq!(stats["by_worker"]["worker-1"], 200);
    assert_eq!(stats["success_rate"], 1.0);
    assert!(stats["average_processing_time_ms"].is_number(), "{stats}");
    let (_, none) = app.get_json("/tasks?status=failed").await;
    assert_eq!(none["count"], 0);
    // Blank filters are no filters.
    let (status, blank) = app.get_json("/tasks?status=&topic=&worker_id=&cursor=&limit=500").await;
    assert_eq!((status, blank["count"].clone()), (200, json!(200)), "{blank}");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_labels_render_the_seed_vocabulary() {
    let app =
        spawn_app_with(AppOptions { vars: vec![("STATUS_LABELS".into(), "seed".into())], ..Default::default() }).await;
    app.submit(&body("seed-1", "say_hello", json!({}))).await;
    let task = app.wait_status("seed-1", "sucesso", WAIT).await;
    assert_eq!(task["result"]["greeting"], "Hello, World!");
    let (_, page) = app.get_json("/tasks?status=sucesso").await;
    assert_eq!(page["count"], 1);
    let (_, stats) = app.get_json("/tasks/statistics").await;
    assert_eq!(stats["by_status"]["sucesso"], 1, "{stats}");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_lists_every_route_and_swagger_ui_is_served() {
    let app = spawn_app().await;
    let (status, doc) = app.get_json("/openapi.json").await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.1")), "{}", doc["openapi"]);
    let paths = doc["paths"].as_object().expect("paths");
    for (path, method) in [
        ("/", "get"),
        ("/health", "get"),
        ("/live", "get"),
        ("/metrics", "get"),
        ("/topics", "get"),
        ("/tasks/submit", "post"),
        ("/tasks/{task_id}/status", "get"),
        ("/tasks/{task_id}/retry", "post"),
        ("/tasks/{task_id}", "delete"),
        ("/tasks", "get"),
        ("/tasks/statistics", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} missing from the OpenAPI document"
        );
    }
    // The instance's own rules: its topics, the identifier limits, query parameters in the query.
    let submit = &doc["components"]["schemas"]["SubmitRequest"]["properties"];
    let topics: Vec<&str> =
        submit["topic"]["enum"].as_array().expect("topic enum").iter().filter_map(|t| t.as_str()).collect();
    assert_eq!(topics, ["nova_publicacao", "say_hello"]);
    assert_eq!(
        (submit["task_id"]["minLength"].clone(), submit["task_id"]["maxLength"].clone()),
        (json!(1), json!(128))
    );
    let rules = doc["components"]["schemas"]["SubmitRequest"]["allOf"].as_array().expect("required-variable rules");
    let nova = rules.iter().find(|r| r["if"]["properties"]["topic"]["const"] == "nova_publicacao").expect("nova rule");
    assert!(nova["then"]["properties"]["variables"]["required"].as_array().is_some_and(|r| r.len() >= 4), "{nova}");
    let list = doc["paths"]["/tasks"]["get"]["parameters"].as_array().expect("list parameters");
    assert!(list.iter().all(|p| p["in"] == "query"), "{list:?}");
    let limit = list.iter().find(|p| p["name"] == "limit").expect("limit parameter");
    assert_eq!((limit["schema"]["minimum"].clone(), limit["schema"]["maximum"].clone()), (json!(1), json!(500)));
    let docs = app.get("/docs/").await;
    assert_eq!(docs.status().as_u16(), 200);
    assert!(docs.text().await.unwrap_or_default().contains("swagger"), "Swagger UI page");

    let (_, topics) = app.get_json("/topics").await;
    let names: Vec<&str> = topics.as_array().expect("list").iter().filter_map(|t| t["name"].as_str()).collect();
    assert_eq!(names, ["nova_publicacao", "say_hello"]);
    assert_eq!(topics[1]["retry"]["max_attempts"], 3);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submission_published_straight_to_the_exchange_is_stored_and_processed() {
    use lapin::{BasicProperties, options::BasicPublishOptions};
    let app = spawn_app().await;
    let conn =
        lapin::Connection::connect(&env("RABBITMQ_URL"), lapin::ConnectionProperties::default()).await.expect("amqp");
    let ch = conn.create_channel().await.expect("channel");
    let payload = body("direct-1", "say_hello", json!({"name": "Amqp"})).to_string();
    ch.basic_publish(
        app.exchange.as_str().into(),
        "task.submit.say_hello".into(),
        BasicPublishOptions::default(),
        payload.as_bytes(),
        BasicProperties::default().with_delivery_mode(2),
    )
    .await
    .expect("publish");
    let task = app.wait_status("direct-1", "succeeded", WAIT).await;
    assert_eq!(task["result"]["greeting"], "Hello, Amqp!");
    assert_eq!(task["attempts"], 1);

    // The same message again is a duplicate: stored once, run once.
    ch.basic_publish(
        app.exchange.as_str().into(),
        "task.submit.say_hello".into(),
        BasicPublishOptions::default(),
        payload.as_bytes(),
        BasicProperties::default(),
    )
    .await
    .expect("publish");
    // A different body under the same id, and garbage, go to the dead-letter queue.
    let conflicting = body("direct-1", "say_hello", json!({"name": "Changed"})).to_string();
    ch.basic_publish(
        app.exchange.as_str().into(),
        "task.submit.say_hello".into(),
        BasicPublishOptions::default(),
        conflicting.as_bytes(),
        BasicProperties::default(),
    )
    .await
    .expect("publish");
    ch.basic_publish(
        app.exchange.as_str().into(),
        "task.submit.say_hello".into(),
        BasicPublishOptions::default(),
        b"not json",
        BasicProperties::default(),
    )
    .await
    .expect("publish");
    // The gateway's dead-letter consumer records both (and drains the queue).
    app.wait_for("two dead letters", WAIT, |v| v["count"] == 2, "/dead-letters").await;
    let task = app.status("direct-1").await.1;
    assert_eq!((task["attempts"].clone(), task["result"]["greeting"].clone()), (json!(1), json!("Hello, Amqp!")));
    let _ = conn.close(200, "bye".into()).await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nova_publicacao_stores_once_and_flags_duplicates_and_bad_input() {
    let app = spawn_app().await;
    let publication = json!({
        "numero_processo": "0001234-56.2024.8.26.0100",
        "data_publicacao": "15/03/2024",
        "texto_publicacao": "Intimação: o réu deverá se manifestar em 15 dias.",
        "fonte": "dw",
        "tribunal": "TJSP",
        "instancia": 1,
    });
    app.submit(&body("nova-1", "nova_publicacao", publication.clone())).await;
    let first = app.wait_status("nova-1", "succeeded", WAIT).await;
    assert_eq!(first["result"]["status"], "success", "{first}");
    assert_eq!(first["result"]["step_1_status"], "completed");
    assert!(first["result"]["mongodb_id"].is_string());
    // The seed's fields: a message, the steps, a UTC time, and the record as stored.
    let result = &first["result"];
    assert!(
        result["message"].is_string() && result["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{result}"
    );
    let steps: Vec<&str> =
        result["processing_steps"].as_array().into_iter().flatten().filter_map(|s| s["step"].as_str()).collect();
    assert_eq!(steps, ["validate_input", "normalize_text", "insert_movimentacao"]);
    let movimentacao = &result["movimentacao"];
    assert_eq!(movimentacao["data_publicacao_original"], "15/03/2024");
    assert_eq!(movimentacao["hash_unica"], result["hash_unica"]);
    let oid =
        bson::oid::ObjectId::parse_str(result["mongodb_id"].as_str().unwrap_or("")).expect("mongodb_id is an ObjectId");
    let record =
        app.mongo.collection::<bson::Document>("movimentacoes_judiciais").find_one(bson::doc! {"_id": oid}).await;
    let record = record.expect("find works").expect("the record mongodb_id names exists");
    let stored_at =
        record.get_datetime("created_at").map(|d| d.to_chrono().to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    assert_eq!(stored_at.ok().as_deref(), movimentacao["created_at"].as_str(), "{movimentacao}");
    assert_eq!(record.get_str("status").ok(), movimentacao["status"].as_str());

    // Same publication, accents and punctuation aside: a duplicate, reported as a warning.
    let mut same = publication.clone();
    same["texto_publicacao"] = json!("INTIMACAO o reu devera se manifestar em 15 dias");
    same["data_publicacao"] = json!("15.03.2024");
    app.submit(&body("nova-2", "nova_publicacao", same)).await;
    let second = app.wait_status("nova-2", "succeeded", WAIT).await;
    assert_eq!(second["result"]["status"], "warning", "{second}");
    assert_eq!(second["result"]["step_1_status"], "duplicate_detected");
    assert_eq!(second["result"]["hash_unica"], first["result"]["hash_unica"]);
    assert!(second["result"]["message"].is_string() && second["result"]["timestamp"].is_string(), "{second}");

    let mut bad = publication.clone();
    bad["data_publicacao"] = json!("31/02/2024");
    bad["fonte"] = json!("jornal");
    app.submit(&body("nova-3", "nova_publicacao", bad)).await;
    let third = app.wait_status("nova-3", "failed", WAIT).await;
    assert_eq!(third["attempts"], 1, "a business error is not retried");
    assert_eq!(third["metadata"]["error_code"], "validation", "the error kind the topic maps to a BPMN code");
    let message = third["error_message"].as_str().unwrap_or("");
    assert!(message.contains("data_publicacao") && message.contains("fonte"), "{message}");

    let stored = app
        .mongo
        .collection::<bson::Document>("movimentacoes_judiciais")
        .count_documents(bson::doc! {})
        .await
        .expect("count");
    assert_eq!(stored, 1);
    app.cleanup().await;
}
