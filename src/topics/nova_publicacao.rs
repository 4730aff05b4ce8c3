//! Native handler for the `nova_publicacao` topic: validates a legal publication, normalises its
//! text, derives the `hash_unica` fingerprint and records the publication once in
//! `movimentacoes_judiciais`. It owns that collection's unique index and what a duplicate means (a
//! success with a warning). It must not retry, sleep or touch the task store: it only classifies a
//! failure (bad input is a business error, a database fault is retryable) and reports its steps.

use bson::{Bson, DateTime, Document, doc, oid::ObjectId};
use chrono::{NaiveDate, NaiveTime};
use mongodb::error::{Error as MongoError, ErrorKind, WriteFailure};
use mongodb::{Collection, Database, IndexModel, options::IndexOptions};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use unicode_normalization::{UnicodeNormalization, char::is_combining_mark};

use super::handler::{Handler, HandlerContext, HandlerError, Variables};

const COLLECTION: &str = "movimentacoes_judiciais";
const FONTES: [&str; 3] = ["dw", "manual", "escavador"];
/// MongoDB's duplicate-key code (E11000).
const DUPLICATE_KEY: i32 = 11000;

/// Records each legal publication once; deduplication rests on the unique `hash_unica` index.
pub struct NovaPublicacao {
    movimentacoes: Collection<Document>,
}

impl NovaPublicacao {
    pub fn new(db: &Database) -> Self {
        Self { movimentacoes: db.collection(COLLECTION) }
    }

    /// Creates the unique index on `hash_unica` (idempotent). Without it duplicates are stored
    /// silently, so call it at start-up before serving the topic.
    pub async fn ensure_indexes(&self) -> mongodb::error::Result<()> {
        let unique = IndexOptions::builder().unique(true).build();
        let index = IndexModel::builder().keys(doc! { "hash_unica": 1 }).options(unique).build();
        self.movimentacoes.create_index(index).await.map(drop)
    }
}

/// Input that passed validation; strings are trimmed except the two kept verbatim for audit.
struct Publicacao<'a> {
    numero_processo: &'a str,
    data: NaiveDate,
    data_original: &'a str,
    texto: &'a str,
    fonte: &'a str,
    tribunal: Option<&'a str>,
    instancia: Option<Value>,
}

#[async_trait::async_trait]
impl Handler for NovaPublicacao {
    #[tracing::instrument(skip_all, fields(task_id = %ctx.task_id, topic = %ctx.topic))]
    async fn handle(&self, ctx: &HandlerContext, input: &Variables) -> Result<Variables, HandlerError> {
        let p = match validate(input) {
            Ok(p) => p,
            Err(message) => {
                ctx.step(Some("validando"), "validate_input", "failed", Some(message.clone())).await;
                return Err(HandlerError::business("INVALID_INPUT", message));
            }
        };
        ctx.step(Some("validando"), "validate_input", "completed", None).await;

        let normalizado = normalize_text(p.texto);
        let hash = hash_unica(p.numero_processo, p.data, &normalizado);
        let detail = Some(format!("hash_unica {hash}"));
        ctx.step(Some("normalizando"), "normalize_text", "completed", detail).await;

        // Our own _id lets us answer with it without trusting the shape of the insert reply.
        let id = ObjectId::new();
        let record = doc! {
            "_id": id,
            "hash_unica": &hash,
            "numero_processo": p.numero_processo,
            "data_publicacao": DateTime::from_chrono(p.data.and_time(NaiveTime::MIN).and_utc()),
            "data_publicacao_original": p.data_original,
            "texto_publicacao": p.texto,
            "texto_normalizado": &normalizado,
            "fonte": p.fonte,
            "tribunal": p.tribunal,
            "instancia": p.instancia.as_ref().map_or(Bson::Null, instancia_bson),
            "task_id": &ctx.task_id,
            "worker_id": &ctx.worker_id,
            "created_at": DateTime::now(),
            "status": "novo",
        };
        match self.movimentacoes.insert_one(record).await {
            Ok(_) => {
                let detail = Some(format!("mongodb_id {}", id.to_hex()));
                ctx.step(Some("gravando"), "insert_movimentacao", "completed", detail).await;
                Ok(created(&p, id, &hash, &normalizado))
            }
            Err(err) if is_duplicate_key(&err) => {
                match self.earlier_insert(&hash, &ctx.task_id).await {
                    // A re-run of the task that inserted the record (it crashed before its outcome was
                    // stored) must answer as that run would have, not report its own record as a duplicate.
                    Ok(Some(id)) => {
                        let detail = Some(format!("mongodb_id {} (inserted by an earlier attempt)", id.to_hex()));
                        ctx.step(Some("gravando"), "insert_movimentacao", "completed", detail).await;
                        Ok(created(&p, id, &hash, &normalizado))
                    }
                    Ok(None) => {
                        let detail = Some(format!("hash_unica {hash} already recorded"));
                        ctx.step(Some("gravando"), "insert_movimentacao", "duplicate_detected", detail).await;
                        Ok(variables([
                            ("status", json!("warning")),
                            ("step_1_status", json!("duplicate_detected")),
                            ("hash_unica", json!(hash)),
                            ("numero_processo", json!(p.numero_processo)),
                            ("message", json!(format!("publication already recorded (hash_unica {hash})"))),
                        ]))
                    }
                    Err(err) => Err(write_failed(ctx, &err).await),
                }
            }
            Err(err) => Err(write_failed(ctx, &err).await),
        }
    }
}

impl NovaPublicacao {
    /// The `_id` of the record with `hash`, if the task `task_id` itself inserted it.
    async fn earlier_insert(&self, hash: &str, task_id: &str) -> mongodb::error::Result<Option<ObjectId>> {
        let found = self.movimentacoes.find_one(doc! { "hash_unica": hash, "task_id": task_id }).await?;
        Ok(found.and_then(|record| record.get_object_id("_id").ok()))
    }
}

/// Any database fault other than a duplicate is worth retrying: the input itself was valid.
async fn write_failed(ctx: &HandlerContext, err: &MongoError) -> HandlerError {
    let error = without_uris(&err.to_string());
    tracing::warn!(%error, "movimentacoes_judiciais write failed");
    let message = format!("could not record the publication: {error}");
    ctx.step(Some("gravando"), "insert_movimentacao", "failed", Some(message.clone())).await;
    HandlerError::retryable(message)
}

fn created(p: &Publicacao<'_>, id: ObjectId, hash: &str, normalizado: &str) -> Variables {
    let movimentacao = json!({
        "numero_processo": p.numero_processo,
        "data_publicacao": p.data.format("%Y-%m-%d").to_string(),
        "fonte": p.fonte,
        "tribunal": p.tribunal,
        "instancia": p.instancia,
        "texto_normalizado": normalizado,
    });
    variables([
        ("status", json!("success")),
        ("step_1_status", json!("completed")),
        ("mongodb_id", json!(id.to_hex())),
        ("hash_unica", json!(hash)),
        ("movimentacao", movimentacao),
    ])
}

fn variables<const N: usize>(pairs: [(&str, Value); N]) -> Variables {
    pairs.into_iter().map(|(name, value)| (name.to_owned(), value)).collect()
}

/// Checks every field before failing, so one business error names every problem at once.
fn validate(input: &Variables) -> Result<Publicacao<'_>, String> {
    let mut problems = Vec::new();
    let numero_processo = required_text(input, "numero_processo", &mut problems).map(str::trim);
    let data_original = required_text(input, "data_publicacao", &mut problems);
    let data = data_original.and_then(|raw| {
        let parsed = parse_date(raw);
        if parsed.is_none() {
            problems
                .push(format!("data_publicacao {raw:?} is not a real date as dd/mm/yyyy, dd-mm-yyyy or dd.mm.yyyy"));
        }
        parsed
    });
    let texto = required_text(input, "texto_publicacao", &mut problems);
    // Punctuation-only texts would all share one hash and be taken for duplicates of each other.
    if texto.is_some_and(|t| normalize_text(t).is_empty()) {
        problems.push("texto_publicacao has no letters or digits".to_owned());
    }
    let fonte = required_text(input, "fonte", &mut problems).map(str::trim);
    if let Some(f) = fonte.filter(|f| !FONTES.contains(f)) {
        problems.push(format!("fonte {f:?} is not one of {}", FONTES.join(", ")));
    }
    let tribunal = match input.get("tribunal") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.trim()).filter(|s| !s.is_empty()),
        Some(_) => {
            problems.push("tribunal must be a string".to_owned());
            None
        }
    };
    let instancia = match input.get("instancia") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.trim()).filter(|s| !s.is_empty()).map(Value::from),
        Some(n @ Value::Number(_)) => Some(n.clone()),
        Some(_) => {
            problems.push("instancia must be a string or a number".to_owned());
            None
        }
    };
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

fn instancia_bson(value: &Value) -> Bson {
    match value {
        Value::Number(n) => n.as_i64().map_or_else(|| Bson::Double(n.as_f64().unwrap_or(f64::NAN)), Bson::Int64),
        Value::String(s) => Bson::String(s.clone()),
        _ => Bson::Null,
    }
}

/// Accent-, case-, punctuation- and spacing-insensitive form of a publication text.
pub(crate) fn normalize_text(text: &str) -> String {
    let cleaned: String = text
        .nfd()
        .filter(|c| !is_combining_mark(*c))
        .flat_map(char::to_lowercase)
        .map(|c| if c.is_alphanumeric() || c.is_whitespace() { c } else { ' ' })
        .collect();
    cleaned.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A calendar date written `dd/mm/yyyy`, `dd-mm-yyyy` or `dd.mm.yyyy` (one separator throughout).
pub(crate) fn parse_date(raw: &str) -> Option<NaiveDate> {
    let bytes = raw.trim().as_bytes();
    let [d1, d2, sep, m1, m2, sep2, y1, y2, y3, y4] = *bytes else {
        return None;
    };
    if !matches!(sep, b'/' | b'-' | b'.') || sep != sep2 {
        return None;
    }
    let digits = [d1, d2, m1, m2, y1, y2, y3, y4];
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let number = |ds: &[u8]| ds.iter().fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'));
    let year = i32::try_from(number(&digits[4..])).ok()?;
    NaiveDate::from_ymd_opt(year, number(&digits[2..4]), number(&digits[..2]))
}

/// Hex SHA-256 of `numero_processo|YYYY-MM-DD|texto_normalizado`; `texto_normalizado` must
/// already have been through [`normalize_text`].
pub(crate) fn hash_unica(numero_processo: &str, data: NaiveDate, texto_normalizado: &str) -> String {
    let key = format!("{}|{}|{}", numero_processo.trim(), data.format("%Y-%m-%d"), texto_normalizado);
    format!("{:x}", Sha256::digest(key.as_bytes()))
}

/// E11000 in any of the shapes the driver reports it: a single write error (`insert_one`), an
/// indexed write error (`insert_many`, bulk writes) or a failed command (servers that reject the
/// whole `insert` instead of listing write errors); a wrapped cause is checked as well.
fn is_duplicate_key(err: &MongoError) -> bool {
    let here = match err.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(e)) => e.code == DUPLICATE_KEY,
        ErrorKind::InsertMany(e) => e.write_errors.iter().flatten().any(|e| e.code == DUPLICATE_KEY),
        ErrorKind::BulkWrite(e) => e.write_errors.values().any(|e| e.code == DUPLICATE_KEY),
        ErrorKind::Command(e) => e.code == DUPLICATE_KEY,
        _ => false,
    };
    // The driver keeps its cause as `Box<Error>`, which is what a downcast sees.
    let cause = std::error::Error::source(err);
    here || cause.and_then(|c| c.downcast_ref::<Box<MongoError>>()).is_some_and(|c| is_duplicate_key(c))
        || cause.and_then(|c| c.downcast_ref::<MongoError>()).is_some_and(is_duplicate_key)
}

/// Driver messages name hosts, not URIs, today; this keeps credentials out if that ever changes.
fn without_uris(message: &str) -> String {
    message
        .split(' ')
        .map(|word| if word.contains("mongodb://") || word.contains("mongodb+srv://") { "<uri>" } else { word })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::topics::handler::MemoryProgress;

    fn input(pairs: Value) -> Variables {
        match pairs {
            Value::Object(map) => map,
            other => panic!("test input must be a JSON object, got {other}"),
        }
    }

    fn valid() -> Variables {
        input(json!({
            "numero_processo": " 0001234-56.2024.8.26.0100 ",
            "data_publicacao": "05/03/2024",
            "texto_publicacao": "Intimação do réu.",
            "fonte": "dw",
            "tribunal": "TJSP",
            "instancia": 1,
        }))
    }

    fn ymd(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).expect("test dates are real dates")
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
        for raw in ["31/02/2024", "29/02/2023", "2024-01-01", "garbage", "05/03.2024", "5/3/2024", "00/01/2024", ""] {
            assert_eq!(parse_date(raw), None, "{raw}");
        }
    }

    #[test]
    fn the_hash_ignores_spelling_noise_but_not_the_date_or_process() {
        let hash = |numero: &str, data, texto: &str| hash_unica(numero, data, &normalize_text(texto));
        let base = hash("0001", ymd(2024, 3, 5), "Intimação do réu.");
        assert_eq!(base.len(), 64);
        assert!(base.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(base, hash(" 0001 ", ymd(2024, 3, 5), "Intimação do réu."));
        assert_eq!(base, hash("0001", ymd(2024, 3, 5), "INTIMACAO  do reu"));
        assert_ne!(base, hash("0001", ymd(2024, 3, 6), "Intimação do réu."));
        assert_ne!(base, hash("0002", ymd(2024, 3, 5), "Intimação do réu."));
        // Pins the key layout `numero|YYYY-MM-DD|texto` so a refactor cannot silently change it.
        let expected = format!("{:x}", Sha256::digest(b"0001|2024-03-05|intimacao do reu"));
        assert_eq!(base, expected);
    }

    #[test]
    fn validation_names_every_missing_field_at_once() {
        let message = validate(&input(json!({ "tribunal": 5 }))).err().expect("empty input is invalid");
        for field in ["numero_processo", "data_publicacao", "texto_publicacao", "fonte", "tribunal"] {
            assert!(message.contains(field), "{field} missing from {message:?}");
        }
    }

    #[test]
    fn validation_rejects_an_unknown_fonte_and_a_bad_date_together() {
        let mut vars = valid();
        vars.insert("fonte".into(), json!("jornal"));
        vars.insert("data_publicacao".into(), json!("31/02/2024"));
        vars.insert("instancia".into(), json!(["1"]));
        let message = validate(&vars).err().expect("unknown fonte is invalid");
        for needle in ["fonte \"jornal\"", "data_publicacao \"31/02/2024\"", "instancia"] {
            assert!(message.contains(needle), "{needle} missing from {message:?}");
        }
    }

    #[test]
    fn valid_input_is_trimmed_and_keeps_the_original_date_text() {
        let vars = valid();
        let p = validate(&vars).expect("valid input");
        assert_eq!((p.numero_processo, p.fonte, p.tribunal), ("0001234-56.2024.8.26.0100", "dw", Some("TJSP")));
        assert_eq!((p.data, p.data_original), (ymd(2024, 3, 5), "05/03/2024"));
        assert_eq!(p.instancia, Some(json!(1)));
    }

    #[tokio::test]
    async fn invalid_input_is_a_business_error_recorded_as_a_failed_step() {
        // Never contacted: validation fails before any database call.
        let client = mongodb::Client::with_uri_str("mongodb://127.0.0.1:9").await.expect("literal URI parses");
        let handler = NovaPublicacao::new(&client.database("unused"));
        let progress = Arc::new(MemoryProgress::default());
        let ctx = HandlerContext::new("t1".into(), "w1".into(), "nova_publicacao".into(), 1, progress.clone());
        let mut vars = valid();
        vars.remove("texto_publicacao");
        let err = handler.handle(&ctx, &vars).await.expect_err("missing text is invalid");
        assert!(
            matches!(&err, HandlerError::Business { code, message } if code == "INVALID_INPUT" && message.contains("texto_publicacao"))
        );
        let steps = progress.0.lock().expect("progress mutex is never poisoned: no panics while held");
        assert_eq!(steps.len(), 1);
        assert_eq!((steps[0].1.step.as_str(), steps[0].1.status.as_str()), ("validate_input", "failed"));
    }

    #[test]
    fn duplicate_keys_are_recognised_in_write_and_command_form() {
        let write = |code: i32| -> MongoError {
            let e =
                bson::from_document(doc! { "code": code, "errmsg": "E11000 duplicate key" }).expect("valid WriteError");
            ErrorKind::Write(WriteFailure::WriteError(e)).into()
        };
        let command = |code: i32| -> MongoError {
            let e = bson::from_document(doc! { "code": code, "codeName": "x", "errmsg": "E11000" })
                .expect("valid CommandError");
            ErrorKind::Command(e).into()
        };
        assert!(is_duplicate_key(&write(11000)));
        assert!(is_duplicate_key(&command(11000)));
        assert!(!is_duplicate_key(&write(121)));
        assert!(!is_duplicate_key(&command(13)));
    }

    #[test]
    fn uris_never_reach_an_error_message() {
        let cleaned = without_uris("cannot reach mongodb://user:secret@db:27017/x now");
        assert_eq!(cleaned, "cannot reach <uri> now");
    }
}
