//! The store side of events: the change stream every watcher opens (the shared one, and a
//! resuming subscriber's own), what a change document becomes, and resume tokens as the opaque
//! strings clients hold.

use std::{collections::HashMap, sync::Arc};

use bson::{Bson, Document, doc};
use mongodb::{
    Database,
    change_stream::{
        ChangeStream,
        event::{ChangeStreamEvent, OperationType, ResumeToken},
    },
    options::FullDocumentType,
};
use serde::Deserialize;

use super::TaskEvent;
use crate::{domain::TaskStatus, store::ReportState};

pub(crate) type Changes = ChangeStream<ChangeStreamEvent<Document>>;

/// The collection the store keeps tasks in.
const TASKS: &str = "tasks";

/// Opens a change stream on the tasks collection, after `after` when given. Only inserts and
/// writes (updates, replacements: the test server reports an update pipeline as a replace) pass;
/// the full document comes along without the fields no event needs (variables, result, steps),
/// so a large task costs the stream little.
pub(crate) async fn open(database: &Database, after: Option<ResumeToken>) -> mongodb::error::Result<Changes> {
    let pipeline = [
        doc! {"$match": {"operationType": {"$in": ["insert", "update", "replace"]}}},
        doc! {"$project": {
            "fullDocument.variables": 0, "fullDocument.result": 0, "fullDocument.processing_steps": 0,
            "fullDocument.audit": 0, "updateDescription.updatedFields.result": 0,
            "updateDescription.updatedFields.variables": 0,
        }},
    ];
    database
        .collection::<Document>(TASKS)
        .watch()
        .pipeline(pipeline)
        .full_document(FullDocumentType::UpdateLookup)
        .resume_after(after)
        .await
}

/// Whether the store refused to resume from a token for good: it is malformed (FailedToParse,
/// InvalidResumeToken), its history is gone (ChangeStreamHistoryLost) or the stream cannot go on
/// (ChangeStreamFatalError). Anything else (a network error, a restart) is worth retrying.
pub(crate) fn unresumable(error: &mongodb::error::Error) -> bool {
    use mongodb::error::ErrorKind;
    matches!(&*error.kind, ErrorKind::Command(c) if matches!(c.code, 9 | 260 | 280 | 286))
}

/// The fields of a stored task an event shows.
#[derive(Deserialize)]
struct Fields {
    #[serde(rename = "_id")]
    task_id: String,
    topic: String,
    worker_id: String,
    status: TaskStatus,
    #[serde(default)]
    substatus: Option<String>,
    #[serde(default)]
    attempts: u32,
    #[serde(default)]
    error_message: Option<String>,
    updated_at: bson::DateTime,
    #[serde(default)]
    trace_id: Option<String>,
    camunda: Option<Link>,
}

#[derive(Deserialize)]
struct Link {
    report_state: ReportState,
}

/// The fields of an update's own change laid over the looked-up document. The lookup reads the
/// task as it is when the stream gets there, possibly after later writes; the update's fields are
/// as this write left them, so a quick `processing` is still seen as one before `succeeded`.
fn overlay(document: &mut Document, change: &ChangeStreamEvent<Document>) {
    let Some(update) = &change.update_description else { return };
    for (path, value) in &update.updated_fields {
        match path.split_once('.') {
            None => {
                document.insert(path.clone(), value.clone());
            }
            Some(("camunda", "report_state")) => {
                if let Ok(camunda) = document.get_document_mut("camunda") {
                    camunda.insert("report_state", value.clone());
                }
            }
            // Array items (a recorded step) and other nested fields: nothing an event shows.
            Some(_) => {}
        }
    }
    for path in &update.removed_fields {
        document.remove(path);
    }
}

/// The event a change makes, if it makes one: `None` for a delete, a document the lookup no
/// longer found, or one not shaped as a task.
pub(crate) fn to_event(id: &Arc<str>, change: &ChangeStreamEvent<Document>) -> Option<TaskEvent> {
    if !matches!(change.operation_type, OperationType::Insert | OperationType::Update | OperationType::Replace) {
        return None;
    }
    let mut document = change.full_document.clone()?;
    overlay(&mut document, change);
    let f: Fields = bson::from_document(document).ok()?;
    Some(TaskEvent {
        id: id.clone(),
        task_id: f.task_id,
        topic: f.topic,
        worker_id: f.worker_id,
        status: f.status,
        substatus: f.substatus,
        attempts: f.attempts,
        report_state: f.camunda.map_or(ReportState::NotApplicable, |c| c.report_state),
        error_message: f.error_message,
        updated_at: f.updated_at.to_chrono().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        trace_id: f.trace_id,
    })
}

/// A resume token as clients hold it: its `_data` string (both MongoDB and the test server
/// make tokens of that shape).
pub(crate) fn token_id(token: &ResumeToken) -> Option<Arc<str>> {
    match bson::to_bson(token).ok()? {
        Bson::Document(d) => d.get_str("_data").ok().map(Arc::from),
        _ => None,
    }
}

/// The resume token a client's id stands for; `None` for a string no token could be.
pub(crate) fn parse_token(id: &str) -> Option<ResumeToken> {
    let plausible = !id.is_empty() && id.len() <= 4096 && id.bytes().all(|b| b.is_ascii_alphanumeric());
    plausible.then(|| bson::from_bson(Bson::Document(doc! {"_data": id})).ok()).flatten()
}

/// The last event key seen per task, so a write that changed nothing an event shows is dropped.
/// Bounded: two generations of at most `capacity` tasks each; a task forgotten this way at worst
/// repeats its current state once.
pub(crate) struct Dedupe {
    capacity: usize,
    current: HashMap<String, u64>,
    previous: HashMap<String, u64>,
}

impl Dedupe {
    pub(crate) fn new(capacity: usize) -> Self {
        Self { capacity: capacity.max(1), current: HashMap::new(), previous: HashMap::new() }
    }

    /// Whether `event` differs from the last one seen for its task (and remembers it).
    pub(crate) fn is_new(&mut self, event: &TaskEvent) -> bool {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        event.key().hash(&mut hasher);
        let key = hasher.finish();
        let last = self.current.get(&event.task_id).or_else(|| self.previous.get(&event.task_id)).copied();
        if self.current.len() >= self.capacity {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(event.task_id.clone(), key);
        last != Some(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(task: &str, status: TaskStatus, attempts: u32) -> TaskEvent {
        TaskEvent {
            id: Arc::from("00"),
            task_id: task.into(),
            topic: "say_hello".into(),
            worker_id: "w".into(),
            status,
            substatus: None,
            attempts,
            report_state: ReportState::NotApplicable,
            error_message: None,
            updated_at: String::new(),
            trace_id: None,
        }
    }

    #[test]
    fn a_write_that_changes_nothing_shown_is_no_event() {
        let mut seen = Dedupe::new(2);
        assert!(seen.is_new(&event("a", TaskStatus::Queued, 0)));
        assert!(!seen.is_new(&event("a", TaskStatus::Queued, 0)));
        assert!(seen.is_new(&event("a", TaskStatus::Processing, 1)));
        // Two more tasks push "a" into the previous generation: still remembered...
        assert!(seen.is_new(&event("b", TaskStatus::Queued, 0)));
        assert!(seen.is_new(&event("c", TaskStatus::Queued, 0)));
        assert!(!seen.is_new(&event("a", TaskStatus::Processing, 1)));
    }

    #[test]
    fn tokens_round_trip_and_odd_ids_are_refused() {
        let token = parse_token("8263a1b2").expect("hex is a token");
        assert_eq!(token_id(&token).as_deref(), Some("8263a1b2"));
        assert!(parse_token("").is_none());
        assert!(parse_token("a\nb").is_none());
    }
}
