//! Against the real Camunda 7.24 engine: how objects and arrays in a result reach Camunda. By
//! default they are `Object` variables serialized as `application/json` with a Java map or list
//! type, so BPMN expressions read their fields (`${movimentacao.numero_processo}`); a topic with
//! `json_variables = "spin"` gets Spin `Json` instead. The gateway pulls the tasks itself
//! (`source = "camunda"`), so no worker stands in between.

use std::time::Duration;

use serde_json::{Value, json};

use crate::{
    engine::Engine,
    helpers::{AppOptions, TestApp, downstream_with, spawn_app_with, unique},
};

const WAIT: Duration = Duration::from_secs(30);

/// What the stand-in downstream answers: an object and a list of objects.
fn reply() -> Value {
    json!({
        "movimentacao": {"numero_processo": "0001234-56.2024.8.26.0100", "tribunal": "TJSP",
            "instancia": 1, "partes": ["A", "B"]},
        "etapas": [{"name": "validacao", "status": "completed"}, {"name": "persistencia", "status": "completed"}],
    })
}

/// A pull-mode gateway whose topic `topic` POSTs to `url`; `extra` goes into the topic file.
async fn pulling_gateway(engine: &Engine, topic: &str, url: &str, extra: &str) -> TestApp {
    let file = format!(
        "handler = \"http\"\nurl = \"{url}\"\ntimeout_seconds = 30\nsource = \"camunda\"\n{extra}\n[retry]\nmax_attempts = 1\n"
    );
    let vars = vec![("CAMUNDA_URL".to_owned(), engine.base.clone())];
    spawn_app_with(AppOptions { topics: vec![(topic.to_owned(), file)], vars, ..Default::default() }).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_result_is_a_json_serialized_java_map_whose_fields_bpmn_expressions_read() {
    let engine = Engine::new();
    let topic = unique("objexpr").to_ascii_lowercase();
    let d = engine.deploy("object_expression", &topic).await;
    let down = downstream_with(vec![200], Duration::ZERO, Some(reply())).await;
    let app = pulling_gateway(&engine, &topic, &down.url, "").await;

    let pid = engine.start(&d.key, json!({})).await;
    engine.wait_instance(&pid, "COMPLETED", WAIT).await;

    // The gateway's condition `${movimentacao.numero_processo == '…'}` held, and the listeners
    // read a field of the map and a field of the list's first element.
    assert!(engine.activity_reached(&pid, "matched_end").await, "the condition on the object's field held");
    assert!(!engine.activity_reached(&pid, "other_end").await);
    let vars = engine.variables(&pid).await;
    assert_eq!(vars["tribunal_lido"], ("String".to_owned(), json!("TJSP")));
    assert_eq!(vars["primeira_etapa"], ("String".to_owned(), json!("validacao")));

    for (name, java_type) in [("movimentacao", "java.util.LinkedHashMap"), ("etapas", "java.util.ArrayList")] {
        let var = engine.variable(&pid, name).await;
        assert_eq!(var["type"], "Object", "{var}");
        assert_eq!(var["valueInfo"]["serializationDataFormat"], "application/json", "{var}");
        // The engine may write the type back with its parameters (`java.util.LinkedHashMap<…>`).
        let type_name = var["valueInfo"]["objectTypeName"].as_str().unwrap_or("");
        assert!(type_name.starts_with(java_type), "{name}: {var}");
        let stored: Value = serde_json::from_str(var["value"].as_str().unwrap_or("null")).unwrap_or(Value::Null);
        assert_eq!(stored, reply()[name], "{name} keeps its content");
    }
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_with_spin_json_variables_delivers_objects_and_arrays_as_json() {
    let engine = Engine::new();
    let topic = unique("spinvars").to_ascii_lowercase();
    let d = engine.deploy("say_hello", &topic).await;
    let down = downstream_with(vec![200], Duration::ZERO, Some(reply())).await;
    let app = pulling_gateway(&engine, &topic, &down.url, "json_variables = \"spin\"").await;

    let pid = engine.start(&d.key, json!({})).await;
    engine.wait_instance(&pid, "COMPLETED", WAIT).await;

    for name in ["movimentacao", "etapas"] {
        let var = engine.variable(&pid, name).await;
        assert_eq!(var["type"], "Json", "{var}");
        let stored: Value = serde_json::from_str(var["value"].as_str().unwrap_or("null")).unwrap_or(Value::Null);
        assert_eq!(stored, reply()[name], "{name} keeps its content");
    }
    app.cleanup().await;
}
