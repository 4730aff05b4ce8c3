//! A thin client for the real Camunda 7.24 test engine (`CAMUNDA_TEST_URL`): deploy a fixture
//! under a unique process key and topic, start instances, act as a seed-style worker, and read
//! back what Camunda shows (history, variables, incidents).

use std::time::Duration;

use serde_json::{Value, json};
use worker_api_gateway::topics::JsonVariables;

use crate::helpers::env;

pub struct Engine {
    pub base: String,
    http: reqwest::Client,
}

/// A deployed copy of a fixture: its process key and external-task topic are unique to a test.
pub struct Deployed {
    pub key: String,
    pub topic: String,
}

impl Engine {
    pub fn new() -> Self {
        Self { base: env("CAMUNDA_TEST_URL"), http: reqwest::Client::new() }
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(format!("{}{path}", self.base)).send().await.expect("Camunda answers");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self.http.post(format!("{}{path}", self.base)).json(&body).send().await.expect("Camunda answers");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn delete(&self, path: &str) -> u16 {
        self.http.delete(format!("{}{path}", self.base)).send().await.expect("Camunda answers").status().as_u16()
    }

    /// Deploys `tests/fixtures/bpmn/{fixture}.bpmn` with its process key and topic renamed to
    /// `{topic}_process` and `{topic}`.
    pub async fn deploy(&self, fixture: &str, topic: &str) -> Deployed {
        let path = format!("{}/tests/fixtures/bpmn/{fixture}.bpmn", env!("CARGO_MANIFEST_DIR"));
        let xml = std::fs::read_to_string(&path).expect("fixture exists");
        let key = format!("{topic}_process");
        let xml = xml
            .replace(&format!("\"{fixture}_process\""), &format!("\"{key}\""))
            .replace(&format!("camunda:topic=\"{fixture}\""), &format!("camunda:topic=\"{topic}\""));
        let form = reqwest::multipart::Form::new()
            .text("deployment-name", key.clone())
            .part("data", reqwest::multipart::Part::text(xml).file_name(format!("{key}.bpmn")));
        let r =
            self.http.post(format!("{}/deployment/create", self.base)).multipart(form).send().await.expect("deploy");
        assert_eq!(r.status().as_u16(), 200, "deploy {key}: {:?}", r.text().await);
        Deployed { key, topic: topic.to_owned() }
    }

    /// Deploys `tests/fixtures/bpmn/{fixture}.bpmn` with its process key renamed to `key` and its
    /// external-task topic kept as written: for clients whose topic is fixed (the seed's workers).
    pub async fn deploy_keeping_topic(&self, fixture: &str, key: &str) -> Deployed {
        let path = format!("{}/tests/fixtures/bpmn/{fixture}.bpmn", env!("CARGO_MANIFEST_DIR"));
        let xml = std::fs::read_to_string(&path).expect("fixture exists");
        let topic = xml
            .split("camunda:topic=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("the fixture has an external task with a topic")
            .to_owned();
        let xml = xml.replace(&format!("\"{fixture}_process\""), &format!("\"{key}\""));
        let form = reqwest::multipart::Form::new()
            .text("deployment-name", key.to_owned())
            .part("data", reqwest::multipart::Part::text(xml).file_name(format!("{key}.bpmn")));
        let r =
            self.http.post(format!("{}/deployment/create", self.base)).multipart(form).send().await.expect("deploy");
        assert_eq!(r.status().as_u16(), 200, "deploy {key}: {:?}", r.text().await);
        Deployed { key: key.to_owned(), topic }
    }

    /// Starts an instance with plain variables (typed as the gateway types results by default).
    pub async fn start(&self, key: &str, variables: Value) -> String {
        let typed: serde_json::Map<String, Value> = variables
            .as_object()
            .map(|vars| worker_api_gateway::camunda::variables::to_typed_map(vars, JsonVariables::Object))
            .unwrap_or_default();
        let (status, v) = self.post(&format!("/process-definition/key/{key}/start"), json!({"variables": typed})).await;
        assert_eq!(status, 200, "start {key}: {v}");
        v["id"].as_str().expect("instance id").to_owned()
    }

    /// fetchAndLock as `worker`, waiting up to 10 s for at least one task.
    pub async fn fetch(&self, worker: &str, topic: &str, max: u32, lock_ms: u64) -> Vec<Value> {
        let body = json!({"workerId": worker, "maxTasks": max, "asyncResponseTimeout": 10_000,
            "topics": [{"topicName": topic, "lockDuration": lock_ms}]});
        let (status, v) = self.post("/external-task/fetchAndLock", body).await;
        assert_eq!(status, 200, "{v}");
        v.as_array().cloned().unwrap_or_default()
    }

    /// One quick fetchAndLock (no long poll), for checking nothing is available.
    pub async fn fetch_now(&self, worker: &str, topic: &str) -> Vec<Value> {
        let body =
            json!({"workerId": worker, "maxTasks": 10, "topics": [{"topicName": topic, "lockDuration": 60_000}]});
        self.post("/external-task/fetchAndLock", body).await.1.as_array().cloned().unwrap_or_default()
    }

    pub async fn instance_state(&self, pid: &str) -> String {
        self.get(&format!("/history/process-instance/{pid}")).await.1["state"].as_str().unwrap_or("").to_owned()
    }

    pub async fn wait_instance(&self, pid: &str, state: &str, limit: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let (_, v) = self.get(&format!("/history/process-instance/{pid}")).await;
            if v["state"] == state {
                return v;
            }
            assert!(tokio::time::Instant::now() < deadline, "instance {pid} never reached {state}: {v}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Historic variables of an instance, name → (type, raw value).
    pub async fn variables(&self, pid: &str) -> std::collections::HashMap<String, (String, Value)> {
        let (_, v) =
            self.get(&format!("/history/variable-instance?processInstanceId={pid}&deserializeValues=false")).await;
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|var| {
                Some((var["name"].as_str()?.to_owned(), (var["type"].as_str()?.to_owned(), var["value"].clone())))
            })
            .collect()
    }

    /// One historic variable of an instance as Camunda shows it (`type`, `value` unparsed,
    /// `valueInfo`), or Null.
    pub async fn variable(&self, pid: &str, name: &str) -> Value {
        let path =
            format!("/history/variable-instance?processInstanceId={pid}&variableName={name}&deserializeValues=false");
        self.get(&path).await.1.as_array().and_then(|a| a.first().cloned()).unwrap_or(Value::Null)
    }

    pub async fn activity_reached(&self, pid: &str, activity: &str) -> bool {
        let (_, v) =
            self.get(&format!("/history/activity-instance?processInstanceId={pid}&activityId={activity}")).await;
        v.as_array().is_some_and(|a| !a.is_empty())
    }

    pub async fn incidents(&self, pid: &str) -> Vec<Value> {
        self.get(&format!("/incident?processInstanceId={pid}")).await.1.as_array().cloned().unwrap_or_default()
    }
}
