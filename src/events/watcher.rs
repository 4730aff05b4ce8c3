//! The process's one change stream: read every change to a task, turn it into an event when it
//! changed something an event shows, and hand it to the hub. After an error (the store
//! restarted, a network cut) it reopens from the last change it saw, with back-off; if the store
//! can no longer resume from there, it starts afresh and tells subscribers `reset`.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use mongodb::change_stream::event::ResumeToken;

use super::{
    Shared,
    change::{self, Dedupe},
    hub::{Hub, WatcherState},
};

const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Tasks whose last event is remembered (per generation; see [`Dedupe`]).
const REMEMBERED_TASKS: usize = 65_536;

pub(super) async fn run(hub: Arc<Hub>) {
    let mut after: Option<ResumeToken> = None;
    let mut backoff = FIRST_BACKOFF;
    let mut dedupe = Dedupe::new(REMEMBERED_TASKS);
    loop {
        let opened = tokio::select! {
            _ = hub.stop.cancelled() => return,
            opened = change::open(&hub.database, after.clone()) => opened,
        };
        let mut stream = match opened {
            Ok(stream) => stream,
            Err(error) if after.is_some() && change::unresumable(&error) => {
                tracing::warn!(%error, "the store cannot resume the event stream where it stopped; starting afresh");
                after = None;
                hub.reset("the store's change history no longer reaches the last event this gateway saw");
                continue;
            }
            Err(error) => {
                tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "cannot open the store's change stream");
                hub.set_state(WatcherState::Retrying);
                tokio::select! {
                    _ = hub.stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        if after.is_some() {
            tracing::info!("event stream resumed");
        }
        hub.set_state(WatcherState::Live);
        backoff = FIRST_BACKOFF;
        loop {
            let next = tokio::select! {
                _ = hub.stop.cancelled() => return,
                next = stream.next() => next,
            };
            match next {
                Some(Ok(changed)) => {
                    let Some(id) = change::token_id(&changed.id) else { continue };
                    let event = change::to_event(&id, &changed).filter(|e| dedupe.is_new(e)).map(Shared::new);
                    hub.record(&id, event);
                    after = Some(changed.id);
                }
                Some(Err(error)) => {
                    tracing::warn!(%error, "the store's change stream failed; resuming");
                    break;
                }
                None => {
                    // Invalidated (the collection was dropped or renamed): nothing left to
                    // resume, a new stream begins.
                    tracing::warn!("the store's change stream ended; opening a new one");
                    after = None;
                    break;
                }
            }
        }
        if after.is_some() {
            after = stream.resume_token().or(after);
        }
        hub.set_state(WatcherState::Retrying);
    }
}
