//! The intake's record of confirmed publishes: written down before the publish hold runs out
//! (so the relay never publishes an accepted task twice), or made unnecessary by the claim.

use std::time::{Duration, Instant};

use serde_json::json;
use worker_api_gateway::relay::PUBLISH_HOLD;

use crate::helpers::{AppOptions, body, queue_depth_is, spawn_app, spawn_app_with};

const TASKS: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_tasks_have_their_confirmed_publish_recorded_before_the_hold_runs_out() {
    // No consumers: every task stays queued, so only the intake's record can clear its debt.
    let app =
        spawn_app_with(AppOptions { vars: vec![("GATEWAY_MODE".into(), "api".into())], ..Default::default() }).await;
    let submitted = Instant::now();
    let ids: Vec<String> = (0..TASKS).map(|i| format!("held-{i}")).collect();
    for id in &ids {
        assert_eq!(app.submit(&body(id, "say_hello", json!({}))).await.0, 200);
    }
    loop {
        let mut owed = 0;
        for id in &ids {
            owed += usize::from(app.status_from_store(id).await.publish_due_at.is_some());
        }
        if owed == 0 {
            break;
        }
        assert!(
            submitted.elapsed() < PUBLISH_HOLD,
            "{owed} confirmed publishes still unrecorded when their hold ran out"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Exactly one message per task: the relay had nothing to publish again.
    let queue = format!("{}.task.submit.say_hello", app.exchange);
    assert!(queue_depth_is(&queue, TASKS as u32).await, "the queue holds one message per task");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claimed_task_owes_no_publish() {
    let app = spawn_app().await;
    assert_eq!(app.submit(&body("claimed-1", "say_hello", json!({"name": "Lea"}))).await.0, 200);
    app.wait_status("claimed-1", "succeeded", Duration::from_secs(30)).await;
    // Long before the hold ends: the claim itself cleared the debt.
    assert_eq!(app.status_from_store("claimed-1").await.publish_due_at, None);
    app.cleanup().await;
}
