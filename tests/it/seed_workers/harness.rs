//! What the seed-worker tests share besides the worker process itself ([`super::worker`]): the
//! lock that runs them one at a time, a gateway configured for the seed's workers, fixtures
//! deployed under their own process key, and reads of Camunda's history.
//!
//! The workers' topics are fixed (`say_hello`, `nova_publicacao`), so these tests cannot give each
//! test its own topic as the other Camunda tests do: each test deploys its fixture under its own
//! process key, holds [`one_at_a_time`] for its whole run, and looks only at its own instances.
//! No other test may use those two topic names at Camunda.

use std::{
    os::{
        linux::net::SocketAddrExt,
        unix::net::{SocketAddr, UnixListener},
    },
    time::Duration,
};

use serde_json::{Value, json};

use crate::{
    engine::{Deployed, Engine},
    helpers::{AppOptions, TestApp, spawn_app_with, unique},
};

/// Process keys deployed here start with this; only their leftovers are swept.
const KEY_PREFIX: &str = "seed_";

/// Who ends the task at Camunda.
#[derive(Clone, Copy, Debug)]
pub enum Completes {
    /// Seed style: no `CAMUNDA_URL`; the worker completes the task itself once its lock has run
    /// out and it fetches the task again.
    Worker,
    /// Report mode: `CAMUNDA_URL` is set and the gateway reports the outcome.
    Gateway,
}

/// Names the lock that serialises these tests across every test process on the machine (one
/// Camunda engine serves them all): an abstract Unix socket, which the kernel frees when its
/// holder exits, however it ends, so a killed run leaves no stale lock.
const LOCK_NAME: &[u8] = b"worker-api-gateway/seed-workers";
/// How long a test waits for the others (each takes seconds; a whole module run, under a minute).
const LOCK_LIMIT: Duration = Duration::from_secs(600);

/// The lock held by the running seed-worker test.
pub struct OneAtATime(#[allow(dead_code, reason = "held, never read: the bound name is the lock")] UnixListener);

/// Held for a whole test (declare it first, so it is dropped last, after the worker has stopped):
/// a worker takes any task on its topic, so no two of these tests may run at once, in this
/// process or another. Then deletes instances that an aborted run of these tests left behind.
pub async fn one_at_a_time(engine: &Engine) -> OneAtATime {
    let addr = SocketAddr::from_abstract_name(LOCK_NAME).expect("a short abstract socket name is valid");
    let deadline = tokio::time::Instant::now() + LOCK_LIMIT;
    let listener = loop {
        match UnixListener::bind_addr(&addr) {
            Ok(listener) => break listener,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "another seed-worker test held the lock for {LOCK_LIMIT:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("cannot take the seed-worker test lock: {e}"),
        }
    };
    for topic in ["say_hello", "nova_publicacao"] {
        let (_, tasks) = engine.get(&format!("/external-task?topicName={topic}")).await;
        for task in tasks.as_array().into_iter().flatten() {
            let ours = task["processDefinitionKey"].as_str().is_some_and(|k| k.starts_with(KEY_PREFIX));
            if let (true, Some(pid)) = (ours, task["processInstanceId"].as_str()) {
                engine.delete(&format!("/process-instance/{pid}?skipCustomListeners=true")).await;
            }
        }
    }
    OneAtATime(listener)
}

/// A gateway as the seed's workers expect it: seed status labels (`sucesso` / `erro`), and
/// `CAMUNDA_URL` when the gateway is to complete the tasks; on top of `options` (e.g. a topic
/// file named `say_hello` replaces the repository's, for a slow or failing handler).
pub async fn gateway(engine: &Engine, completes: Completes, mut options: AppOptions) -> TestApp {
    options.vars.push(("STATUS_LABELS".to_owned(), "seed".to_owned()));
    // The seed's workers send no credentials: a private worker network, as the README says.
    options.vars.push(("ANONYMOUS_SCOPES".to_owned(), "submit,read".to_owned()));
    if let Completes::Gateway = completes {
        options.vars.push(("CAMUNDA_URL".to_owned(), engine.base.clone()));
    }
    spawn_app_with(options).await
}

/// Deploys `tests/fixtures/bpmn/{fixture}.bpmn` under a process key of its own, its topic kept.
pub async fn deploy(engine: &Engine, fixture: &str) -> Deployed {
    engine.deploy_keeping_topic(fixture, &unique(&format!("{KEY_PREFIX}{fixture}"))).await
}

/// A nova_publicacao input that passes the gateway's validation.
pub fn publicacao(numero_processo: &str) -> Value {
    json!({
        "numero_processo": numero_processo,
        "data_publicacao": "15/03/2024",
        "texto_publicacao": "Intimação: manifeste-se a parte autora no prazo de 15 dias.",
        "fonte": "dw",
        "tribunal": "tjmg",
        "instancia": "1",
    })
}

/// The id of the instance's external task, once Camunda has created it.
pub async fn external_task_id(engine: &Engine, pid: &str) -> String {
    let path = format!("/history/external-task-log?processInstanceId={pid}&creationLog=true");
    let (_, logs) = engine.get(&path).await;
    logs[0]["externalTaskId"].as_str().unwrap_or_else(|| panic!("no external task for {pid}: {logs}")).to_owned()
}

/// One historic variable of an instance, as Camunda has it (`type`, raw `value`, `valueInfo`,
/// and `activityInstanceId`: the instance id for a process variable); Null if there is none.
pub async fn variable_instance(engine: &Engine, pid: &str, name: &str) -> Value {
    let path =
        format!("/history/variable-instance?processInstanceId={pid}&variableName={name}&deserializeValues=false");
    engine.get(&path).await.1.as_array().and_then(|a| a.first().cloned()).unwrap_or(Value::Null)
}

/// The external task's history: who completed it (`successLog`), failed it, or threw a BPMN error.
pub async fn task_log(engine: &Engine, task_id: &str) -> Vec<Value> {
    let (_, logs) = engine.get(&format!("/history/external-task-log?externalTaskId={task_id}")).await;
    logs.as_array().cloned().unwrap_or_default()
}
