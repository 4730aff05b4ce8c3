//! The result variables `nova_publicacao` answers with, built from what was validated and what
//! was stored. The names are the seed's (its task processor's answer and its
//! `MovimentacaoJudicial` model), so a process written against the seed reads the same fields:
//! `status`, `message`, `step_1_status`, `hash_unica`, `mongodb_id`, `movimentacao`,
//! `processing_steps`, `timestamp`. It builds values only: no database, no clock of its own.

use bson::{Document, oid::ObjectId};
use chrono::{DateTime, NaiveTime, SecondsFormat, Utc};
use serde_json::{Value, json};

use super::{NEW_RECORD_STATUS, Publicacao};
use crate::topics::{HandlerContext, Variables};

/// The record this task owns in `movimentacoes_judiciais`, as far as the answer tells of it.
pub(super) struct Stored {
    pub id: ObjectId,
    pub created_at: DateTime<Utc>,
    pub status: String,
}

impl Stored {
    /// From a record an earlier attempt of the task inserted; `None` without an `_id`.
    pub fn from_record(record: &Document) -> Option<Self> {
        let id = record.get_object_id("_id").ok()?;
        // Every record this handler writes has `created_at`; the id's own time is the fallback.
        let created_at = record.get_datetime("created_at").copied().unwrap_or_else(|_| id.timestamp());
        let status = record.get_str("status").unwrap_or(NEW_RECORD_STATUS).to_owned();
        Some(Self { id, created_at: created_at.to_chrono(), status })
    }
}

/// The steps of one run: each is recorded on the task as it happens and listed, by name and
/// status, in the answer's `processing_steps` (the seed listed its steps there too).
#[derive(Default)]
pub(super) struct Steps(Vec<Value>);

impl Steps {
    pub async fn record(
        &mut self,
        ctx: &HandlerContext,
        substatus: Option<&str>,
        step: &str,
        status: &str,
        detail: Option<String>,
    ) {
        ctx.step(substatus, step, status, detail).await;
        self.0.push(json!({"step": step, "status": status}));
    }
}

/// UTC, ISO-8601 with milliseconds and `Z` (e.g. `2024-03-05T14:07:31.412Z`). Not Camunda's
/// date format, so it reaches Camunda as a String, as the seed's timestamps did.
fn iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A new publication, recorded by this task.
pub(super) fn recorded(
    p: &Publicacao<'_>,
    hash: &str,
    normalizado: &str,
    stored: &Stored,
    steps: Steps,
    now: DateTime<Utc>,
) -> Variables {
    let movimentacao = json!({
        "numero_processo": p.numero_processo,
        "data_publicacao": p.data.format("%Y-%m-%d").to_string(),
        "data_publicacao_original": p.data_original,
        // The instant stored as the record's `data_publicacao` (midnight UTC of that day).
        "data_publicacao_parsed": iso(p.data.and_time(NaiveTime::MIN).and_utc()),
        "fonte": p.fonte,
        "tribunal": p.tribunal,
        "instancia": p.instancia,
        "hash_unica": hash,
        "texto_normalizado": normalizado,
        // Characters, as the seed's Python `len` counted them, not bytes.
        "texto_original_length": p.texto.trim().chars().count(),
        "texto_limpo_length": normalizado.chars().count(),
        "status": stored.status,
        "created_at": iso(stored.created_at),
    });
    Variables::from_iter([
        ("status".to_owned(), json!("success")),
        ("message".to_owned(), json!("publication recorded in movimentacoes_judiciais")),
        ("step_1_status".to_owned(), json!("completed")),
        ("mongodb_id".to_owned(), json!(stored.id.to_hex())),
        ("hash_unica".to_owned(), json!(hash)),
        ("movimentacao".to_owned(), movimentacao),
        ("processing_steps".to_owned(), Value::Array(steps.0)),
        ("timestamp".to_owned(), json!(iso(now))),
    ])
}

/// A publication another task recorded first: a success with a warning, as in the seed.
pub(super) fn duplicate(
    numero_processo: &str,
    hash: &str,
    message: String,
    steps: Steps,
    now: DateTime<Utc>,
) -> Variables {
    Variables::from_iter([
        ("status".to_owned(), json!("warning")),
        ("message".to_owned(), json!(message)),
        ("step_1_status".to_owned(), json!("duplicate_detected")),
        ("hash_unica".to_owned(), json!(hash)),
        ("numero_processo".to_owned(), json!(numero_processo)),
        ("processing_steps".to_owned(), Value::Array(steps.0)),
        ("timestamp".to_owned(), json!(iso(now))),
    ])
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::{NaiveDate, TimeZone};

    use super::*;
    use crate::topics::MemoryProgress;

    fn publicacao() -> Publicacao<'static> {
        Publicacao {
            numero_processo: "0001234-56.2024.8.26.0100",
            data: NaiveDate::from_ymd_opt(2024, 3, 5).expect("a real date"),
            data_original: "05.03.2024",
            texto: " Intimação do réu. ",
            fonte: "dw",
            tribunal: Some(json!("TJSP")),
            instancia: Some(json!(1)),
        }
    }

    fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 3, 5, h, m, s).single().expect("a real instant")
    }

    async fn two_steps(last: &str) -> (Steps, Arc<MemoryProgress>) {
        let progress = Arc::new(MemoryProgress::default());
        let ctx = HandlerContext::new("t1".into(), "w1".into(), "nova_publicacao".into(), 1, progress.clone());
        let mut steps = Steps::default();
        steps.record(&ctx, Some("validando"), "validate_input", "completed", None).await;
        steps.record(&ctx, None, "insert_movimentacao", last, Some("note".into())).await;
        (steps, progress)
    }

    #[tokio::test]
    async fn steps_are_recorded_on_the_task_and_listed_in_order() {
        let (steps, progress) = two_steps("completed").await;
        let recorded = progress.0.lock().expect("not poisoned").clone();
        let names: Vec<_> = recorded.iter().map(|(sub, s)| (sub.clone(), s.step.clone(), s.detail.clone())).collect();
        assert_eq!(
            names,
            [
                (Some("validando".to_owned()), "validate_input".to_owned(), None),
                (None, "insert_movimentacao".to_owned(), Some("note".to_owned()))
            ]
        );
        assert_eq!(
            Value::Array(steps.0),
            json!([{"step": "validate_input", "status": "completed"},
                {"step": "insert_movimentacao", "status": "completed"}])
        );
    }

    #[tokio::test]
    async fn a_recorded_publication_answers_with_the_seeds_fields() {
        let (steps, _) = two_steps("completed").await;
        let stored = Stored { id: ObjectId::new(), created_at: at(12, 0, 1), status: "novo".into() };
        let answer = recorded(&publicacao(), "abc123", "intimacao do reu", &stored, steps, at(12, 0, 2));

        let mut keys: Vec<_> = answer.keys().map(String::as_str).collect();
        keys.sort_unstable();
        let names = "hash_unica message mongodb_id movimentacao processing_steps status step_1_status timestamp";
        assert_eq!(keys, names.split(' ').collect::<Vec<_>>());
        assert_eq!((answer["status"].as_str(), answer["step_1_status"].as_str()), (Some("success"), Some("completed")));
        assert_eq!(answer["mongodb_id"], json!(stored.id.to_hex()));
        assert_eq!(answer["timestamp"], "2024-03-05T12:00:02.000Z");
        assert_eq!(answer["processing_steps"].as_array().map(Vec::len), Some(2));
        assert_eq!(
            answer["movimentacao"],
            json!({
                "numero_processo": "0001234-56.2024.8.26.0100",
                "data_publicacao": "2024-03-05",
                "data_publicacao_original": "05.03.2024",
                "data_publicacao_parsed": "2024-03-05T00:00:00.000Z",
                "fonte": "dw",
                "tribunal": "TJSP",
                "instancia": 1,
                "hash_unica": "abc123",
                "texto_normalizado": "intimacao do reu",
                "texto_original_length": 17,
                "texto_limpo_length": 16,
                "status": "novo",
                "created_at": "2024-03-05T12:00:01.000Z",
            })
        );
    }

    #[tokio::test]
    async fn a_duplicate_answers_with_a_warning_its_message_and_time() {
        let (steps, _) = two_steps("duplicate_detected").await;
        let answer = duplicate("0001", "abc123", "already there".into(), steps, at(8, 30, 0));
        assert_eq!(
            Value::Object(answer),
            json!({
                "status": "warning",
                "message": "already there",
                "step_1_status": "duplicate_detected",
                "hash_unica": "abc123",
                "numero_processo": "0001",
                "processing_steps": [{"step": "validate_input", "status": "completed"},
                    {"step": "insert_movimentacao", "status": "duplicate_detected"}],
                "timestamp": "2024-03-05T08:30:00.000Z",
            })
        );
    }

    #[test]
    fn a_found_record_gives_its_own_id_time_and_status() {
        let id = ObjectId::new();
        let created = bson::DateTime::from_chrono(at(9, 0, 0));
        let found = Stored::from_record(&bson::doc! {"_id": id, "created_at": created, "status": "triado"});
        let found = found.expect("a record with an _id");
        assert_eq!((found.id, found.created_at, found.status.as_str()), (id, at(9, 0, 0), "triado"));
        let bare = Stored::from_record(&bson::doc! {"_id": id}).expect("an _id is enough");
        assert_eq!((bare.created_at, bare.status.as_str()), (id.timestamp().to_chrono(), "novo"));
        assert!(Stored::from_record(&bson::doc! {"x": 1}).is_none());
    }
}
