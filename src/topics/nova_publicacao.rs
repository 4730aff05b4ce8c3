//! Native handler for the `nova_publicacao` topic: validates a legal publication, normalises its
//! text, derives the `hash_unica` fingerprint and records the publication once in
//! `movimentacoes_judiciais`. It owns that collection's unique index and what a duplicate means (a
//! success with a warning). It must not retry, sleep or touch the task store: it only classifies a
//! failure (bad input is a business error, a database fault is retryable) and reports its steps.
//! The result variables it answers with are built in [`answer`].

mod answer;

use bson::{Bson, DateTime, Document, doc, oid::ObjectId};
use chrono::{NaiveDate, NaiveTime, Utc};
use mongodb::error::{Error as MongoError, ErrorKind, WriteFailure};
use mongodb::{Collection, Database, IndexModel, options::IndexOptions};
use serde_json::Value;
use sha2::{Digest, Sha256};
use unicode_normalization::{UnicodeNormalization, char::is_combining_mark};

use self::answer::{Steps, Stored};
use super::handler::{Handler, HandlerContext, HandlerError, Variables};

const COLLECTION: &str = "movimentacoes_judiciais";
/// The status a new record starts with in `movimentacoes_judiciais`.
const NEW_RECORD_STATUS: &str = "novo";
const FONTES: [&str; 3] = ["dw", "manual", "escavador"];
/// MongoDB's duplicate-key code (E11000).
const DUPLICATE_KEY: i32 = 11000;

/// Records each legal publication once; deduplication rests on the unique `hash_unica` index.
pub struct NovaPublicacao {
    movimentacoes: Collection<Document>,
}

/// Input that passed validation; strings are trimmed except the two kept verbatim for audit.
struct Publicacao<'a> {
    numero_processo: &'a str,
    data: NaiveDate,
    data_original: &'a str,
    texto: &'a str,
    fonte: &'a str,
    tribunal: Option<Value>,
    instancia: Option<Value>,
}

impl NovaPublicacao {
    pub fn new(db: &Database) -> Self {
        let movimentacoes = db.collection(COLLECTION);
        Self { movimentacoes }
    }

    /// Creates the unique index on `hash_unica` (idempotent). Without it duplicates are stored
    /// silently, so call it at start-up before serving the topic.
    pub async fn ensure_indexes(&self) -> mongodb::error::Result<()> {
        let unique = IndexOptions::builder().unique(true).build();
        let index = IndexModel::builder().keys(doc! { "hash_unica": 1 }).options(unique);
        self.movimentacoes.create_index(index.build()).await.map(drop)
    }

    /// Inserts the record. `Some` when the stored record is this task's (new, or left by an
    /// earlier attempt of it), `None` when another task recorded the same publication first.
    async fn insert(
        &self,
        ctx: &HandlerContext,
        p: &Publicacao<'_>,
        hash: &str,
        normalizado: &str,
    ) -> mongodb::error::Result<Option<Stored>> {
        // Our own _id and creation time: the answer then does not depend on the insert reply.
        // Millisecond precision, as BSON stores it, so the answer shows what was stored.
        let created_at = DateTime::now();
        let stored =
            Stored { id: ObjectId::new(), created_at: created_at.to_chrono(), status: NEW_RECORD_STATUS.into() };
        let record = doc! {
            "_id": stored.id,
            "hash_unica": hash,
            "numero_processo": p.numero_processo,
            "data_publicacao": DateTime::from_chrono(p.data.and_time(NaiveTime::MIN).and_utc()),
            "data_publicacao_original": p.data_original,
            "texto_publicacao": p.texto,
            "texto_normalizado": normalizado,
            "fonte": p.fonte,
            "tribunal": to_bson(p.tribunal.as_ref()),
            "instancia": to_bson(p.instancia.as_ref()),
            "task_id": &ctx.task_id,
            "worker_id": &ctx.worker_id,
            "created_at": created_at,
            "status": NEW_RECORD_STATUS,
        };
        match self.movimentacoes.insert_one(record).await {
            Ok(_) => Ok(Some(stored)),
            // A re-run after a crash that followed the insert must answer as the first run would
            // have, not report the task's own record as someone else's duplicate.
            Err(err) if is_duplicate_key(&err) => {
                let mine = doc! { "hash_unica": hash, "task_id": &ctx.task_id };
                let found = self.movimentacoes.find_one(mine).await?;
                Ok(found.and_then(|record| Stored::from_record(&record)))
            }
            Err(err) => Err(err),
        }
    }
}

#[async_trait::async_trait]
impl Handler for NovaPublicacao {
    #[tracing::instrument(skip_all, fields(task_id = %ctx.task_id, topic = %ctx.topic))]
    async fn handle(&self, ctx: &HandlerContext, input: &Variables) -> Result<Variables, HandlerError> {
        let mut steps = Steps::default();
        let checked = validate(input);
        let (status, detail) = match &checked {
            Ok(_) => ("completed", None),
            Err(message) => ("failed", Some(message.clone())),
        };
        steps.record(ctx, Some("validando"), "validate_input", status, detail).await;
        let p = checked.map_err(|message| HandlerError::business("validation", message))?;

        let normalizado = normalize_text(p.texto);
        let hash = hash_unica(p.numero_processo, p.data, &normalizado);
        let detail = Some(format!("hash_unica {hash}"));
        steps.record(ctx, Some("normalizando"), "normalize_text", "completed", detail).await;

        match self.insert(ctx, &p, &hash, &normalizado).await {
            Ok(Some(stored)) => {
                let note = Some(format!("mongodb_id {}", stored.id));
                steps.record(ctx, Some("gravando"), "insert_movimentacao", "completed", note).await;
                Ok(answer::recorded(&p, &hash, &normalizado, &stored, steps, Utc::now()))
            }
            Ok(None) => {
                let message = format!("publication already recorded (hash_unica {hash})");
                let note = Some(message.clone());
                steps.record(ctx, Some("gravando"), "insert_movimentacao", "duplicate_detected", note).await;
                Ok(answer::duplicate(p.numero_processo, &hash, message, steps, Utc::now()))
            }
            // The input was valid, so any other database fault is worth another attempt.
            Err(err) => {
                let error = without_uris(&err.kind.to_string());
                tracing::warn!(%error, "movimentacoes_judiciais write failed");
                let message = format!("could not record the publication: {error}");
                steps.record(ctx, Some("gravando"), "insert_movimentacao", "failed", Some(message.clone())).await;
                Err(HandlerError::retryable(message))
            }
        }
    }
}

/// Checks every field before failing, so one business error names every problem at once.
fn validate(input: &Variables) -> Result<Publicacao<'_>, String> {
    let mut problems = Vec::new();
    let numero_processo = required_text(input, "numero_processo", &mut problems).map(str::trim);
    let data_original = required_text(input, "data_publicacao", &mut problems);
    let data = data_original.and_then(parse_date);
    if let Some(raw) = data_original.filter(|_| data.is_none()) {
        problems.push(format!("data_publicacao {raw:?} is not a real date as dd/mm/yyyy, dd-mm-yyyy or dd.mm.yyyy"));
    }
    let texto = required_text(input, "texto_publicacao", &mut problems);
    // Punctuation-only texts would all share one hash and be taken for duplicates of each other.
    if texto.is_some_and(|t| normalize_text(t).is_empty()) {
        problems.push("texto_publicacao has no letters or digits".to_owned());
    }
    let fonte = required_text(input, "fonte", &mut problems).map(str::trim);
    if let Some(f) = fonte.filter(|f| !FONTES.contains(f)) {
        problems.push(format!("fonte {f:?} is not one of {}", FONTES.join(", ")));
    }
    let tribunal = optional(input, "tribunal", false, &mut problems);
    let instancia = optional(input, "instancia", true, &mut problems);
    match (numero_processo, data, data_original, texto, fonte) {
        (Some(numero_processo), Some(data), Some(data_original), Some(texto), Some(fonte)) if problems.is_empty() => {
            Ok(Publicacao { numero_processo, data, data_original, texto, fonte, tribunal, instancia })
        }
        _ => Err(format!("invalid input: {}", problems.join("; "))),
    }
}

/// A required, non-blank string field (returned untrimmed); otherwise notes why not.
fn required_text<'a>(input: &'a Variables, field: &str, problems: &mut Vec<String>) -> Option<&'a str> {
    match input.get(field) {
        Some(Value::String(s)) if !s.trim().is_empty() => return Some(s),
        Some(Value::String(_)) => problems.push(format!("{field} must not be empty")),
        None | Some(Value::Null) => problems.push(format!("{field} is required")),
        Some(_) => problems.push(format!("{field} must be a string")),
    }
    None
}

/// An optional string (or, with `numbers`, number) field; blank counts as absent.
fn optional(input: &Variables, field: &str, numbers: bool, problems: &mut Vec<String>) -> Option<Value> {
    match input.get(field) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.trim()).filter(|s| !s.is_empty()).map(Value::from),
        Some(n @ Value::Number(_)) if numbers => Some(n.clone()),
        Some(_) => {
            let kind = if numbers { "a string or a number" } else { "a string" };
            problems.push(format!("{field} must be {kind}"));
            None
        }
    }
}

fn to_bson(value: Option<&Value>) -> Bson {
    match value {
        Some(Value::Number(n)) => n.as_i64().map_or_else(|| n.as_f64().into(), Bson::Int64),
        Some(Value::String(s)) => Bson::String(s.clone()),
        _ => Bson::Null,
    }
}

/// Accent-, case-, punctuation- and spacing-insensitive form of a publication text.
pub(crate) fn normalize_text(text: &str) -> String {
    let spaced: String = text
        .nfd()
        .filter(|c| !is_combining_mark(*c))
        .flat_map(char::to_lowercase)
        // Whitespace becomes a plain space too; the split below collapses the runs.
        .map(|c| if c.is_alphanumeric() { c } else { ' ' })
        .collect();
    spaced.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A calendar date written `dd/mm/yyyy`, `dd-mm-yyyy` or `dd.mm.yyyy` (one separator throughout).
pub(crate) fn parse_date(raw: &str) -> Option<NaiveDate> {
    let raw = raw.trim();
    let b = raw.as_bytes();
    // chrono alone would also take `5/3/2024` or `+2024`; the accepted formats are fixed-width.
    let digits_elsewhere = b.iter().enumerate().all(|(i, c)| matches!(i, 2 | 5) || c.is_ascii_digit());
    if b.len() != 10 || b[2] != b[5] || !digits_elsewhere {
        return None;
    }
    let format = match b[2] {
        b'/' => "%d/%m/%Y",
        b'-' => "%d-%m-%Y",
        b'.' => "%d.%m.%Y",
        _ => return None,
    };
    NaiveDate::parse_from_str(raw, format).ok()
}

/// Hex SHA-256 of `numero_processo|YYYY-MM-DD|texto`, where `texto` has already been through
/// [`normalize_text`].
pub(crate) fn hash_unica(numero_processo: &str, data: NaiveDate, texto: &str) -> String {
    let date = data.format("%Y-%m-%d");
    let key = format!("{}|{date}|{texto}", numero_processo.trim());
    format!("{:x}", Sha256::digest(key.as_bytes()))
}

/// E11000 in every shape the driver reports it: a write error (`insert_one`), indexed write
/// errors (`insert_many`, bulk writes) or a failed command (a server that rejects the whole
/// `insert` instead of listing write errors).
fn is_duplicate_key(err: &MongoError) -> bool {
    match err.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(e)) => e.code == DUPLICATE_KEY,
        ErrorKind::InsertMany(e) => e.write_errors.iter().flatten().any(|e| e.code == DUPLICATE_KEY),
        ErrorKind::BulkWrite(e) => e.write_errors.values().any(|e| e.code == DUPLICATE_KEY),
        ErrorKind::Command(e) => e.code == DUPLICATE_KEY,
        _ => false,
    }
}

/// Driver messages name hosts, not URIs, today; this keeps credentials out if that ever changes.
fn without_uris(message: &str) -> String {
    let words = message.split(' ').map(|w| if w.contains("://") { "<uri>" } else { w });
    words.collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn valid() -> Variables {
        let input = json!({
            "numero_processo": " 0001234-56.2024.8.26.0100 ",
            "data_publicacao": "05/03/2024",
            "texto_publicacao": "Intimação do réu.",
            "fonte": "dw",
            "tribunal": "TJSP",
            "instancia": 1,
        });
        serde_json::from_value(input).expect("a JSON object literal is a Variables map")
    }

    fn ymd(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).expect("test dates are real dates")
    }

    fn problems_with(changes: Value) -> String {
        let mut input = valid();
        let changes: Variables = serde_json::from_value(changes).expect("changes are an object");
        input.extend(changes);
        validate(&input).err().expect("the changes make the input invalid")
    }

    #[test]
    fn normalising_drops_accents_case_punctuation_and_extra_spacing() {
        let text = "  Intimação: o RÉU, citado!!\tPrazo\n\n15 dias (úteis). ";
        assert_eq!(normalize_text(text), "intimacao o reu citado prazo 15 dias uteis");
        assert_eq!(normalize_text("ÇÃO—àç_x"), "cao ac x");
        assert_eq!(normalize_text(" ... "), "");
    }

    #[test]
    fn dates_parse_in_the_three_brazilian_formats_and_only_when_real() {
        for raw in ["05/03/2024", "05-03-2024", "05.03.2024", " 05/03/2024 "] {
            assert_eq!(parse_date(raw), Some(ymd(2024, 3, 5)), "{raw}");
        }
        assert_eq!(parse_date("29/02/2024"), Some(ymd(2024, 2, 29)));
        let bad = ["31/02/2024", "29/02/2023", "2024-01-01", "garbage", "05/03.2024", "5/3/2024"];
        for raw in bad.into_iter().chain(["00/01/2024", "05/ 3/2024", ""]) {
            assert_eq!(parse_date(raw), None, "{raw}");
        }
    }

    #[test]
    fn the_hash_ignores_spelling_noise_but_not_the_date_or_process() {
        let hash = |numero, data, texto| hash_unica(numero, data, &normalize_text(texto));
        let base = hash("0001", ymd(2024, 3, 5), "Intimação do réu.");
        // Pins the key layout `numero|YYYY-MM-DD|texto`: stored hashes depend on it.
        let expected = format!("{:x}", Sha256::digest(b"0001|2024-03-05|intimacao do reu"));
        assert_eq!(base, expected);
        assert_eq!(base, hash(" 0001 ", ymd(2024, 3, 5), "Intimação do réu."));
        assert_eq!(base, hash("0001", ymd(2024, 3, 5), "INTIMACAO  do, reu!"));
        assert_ne!(base, hash("0001", ymd(2024, 3, 6), "Intimação do réu."));
        assert_ne!(base, hash("0002", ymd(2024, 3, 5), "Intimação do réu."));
    }

    #[test]
    fn validation_names_every_offending_field_at_once() {
        let message = validate(&Variables::new()).err().expect("empty input is invalid");
        for field in ["numero_processo", "data_publicacao", "texto_publicacao", "fonte"] {
            assert!(message.contains(&format!("{field} is required")), "{message}");
        }
        let message = problems_with(json!({"tribunal": 5, "instancia": [1], "texto_publicacao": "?!"}));
        for needle in ["tribunal must be", "instancia must be", "texto_publicacao has no"] {
            assert!(message.contains(needle), "{needle} missing from {message}");
        }
    }

    #[test]
    fn validation_rejects_an_unknown_fonte_and_an_impossible_date() {
        let message = problems_with(json!({"fonte": "jornal", "data_publicacao": "31/02/2024"}));
        assert!(message.contains(r#"fonte "jornal" is not one of"#), "{message}");
        assert!(message.contains(r#"data_publicacao "31/02/2024""#), "{message}");
    }

    #[test]
    fn valid_input_is_trimmed_and_keeps_the_original_date_text() {
        let input = valid();
        let p = validate(&input).expect("valid input");
        assert_eq!((p.numero_processo, p.fonte), ("0001234-56.2024.8.26.0100", "dw"));
        assert_eq!((p.data, p.data_original), (ymd(2024, 3, 5), "05/03/2024"));
        assert_eq!((p.tribunal, p.instancia), (Some(json!("TJSP")), Some(json!(1))));
    }

    #[test]
    fn duplicate_keys_are_recognised_in_write_and_command_form() {
        let error = |code: i32, command: bool| -> MongoError {
            let raw = doc! { "code": code, "codeName": "x", "errmsg": "E11000 duplicate key" };
            let kind = if command {
                ErrorKind::Command(bson::from_document(raw).expect("valid CommandError"))
            } else {
                let e = bson::from_document(raw).expect("valid WriteError");
                ErrorKind::Write(WriteFailure::WriteError(e))
            };
            kind.into()
        };
        assert!(is_duplicate_key(&error(11000, false)) && is_duplicate_key(&error(11000, true)));
        assert!(!is_duplicate_key(&error(121, false)) && !is_duplicate_key(&error(13, true)));
    }

    #[test]
    fn uris_never_reach_an_error_message() {
        let cleaned = without_uris("cannot reach mongodb://user:secret@db:27017/x now");
        assert_eq!(cleaned, "cannot reach <uri> now");
    }
}
