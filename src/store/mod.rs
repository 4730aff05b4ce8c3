//! The task store: the source of truth. Every state change is one atomic conditional update whose
//! filter carries the state the change expects, so racing writers cannot both win. The trait is
//! about what the gateway needs, not about MongoDB, so a second backend can slot in.

mod clock;
mod dead_letter;
mod health;
mod mongo;
mod mongo_batch;
mod mongo_camunda;
mod mongo_change;
mod mongo_dead;
mod mongo_debts;
mod mongo_docs;
mod mongo_errors;
mod mongo_indexes;
mod mongo_insert;
mod mongo_manual;
mod mongo_queries;
mod mongo_retention;
mod mongo_stale;
mod mongo_trait;
mod mongo_transitions;
mod record;
mod values;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::topics::ProcessingStep;

pub use dead_letter::{DeadLetter, DeadLetterQuery};
pub use health::{HEALTH_COLLECTION, StoreHealth, WriteHealth};
pub use mongo::{MongoStore, durable_write_concern};
pub use mongo_docs::lease_for;
pub use mongo_retention::TopicScope;
pub use mongo_stale::StaleCount;
pub use record::{AuditEntry, CamundaLink, ReportState, TaskRecord, TaskSource};
pub use values::{
    AttemptOutcome, Finish, Finished, InsertOutcome, ListQuery, NewTask, ReportCounts, ReportOutcome, Statistics,
    StoreError, TransitionError,
};

/// The error message of a cancelled task, and what Camunda's incident for it says.
pub const CANCELLED_MESSAGE: &str = "cancelled via the gateway";

#[async_trait]
pub trait TaskStore: Send + Sync {
    /// Cheap liveness check of the backend.
    async fn ping(&self) -> Result<(), StoreError>;

    /// The store's clock as last measured: the time to stamp on what this replica writes (a
    /// creation time, a debt's range). Decisions about a task's fate never use it; the store
    /// takes them against its own clock inside the write.
    fn now(&self) -> DateTime<Utc>;

    /// Stores a task unless its id exists; tells which happened.
    async fn insert(&self, task: NewTask) -> Result<InsertOutcome, StoreError>;

    /// Stores many tasks in one round trip, all created at `created_at`; one outcome per task, in
    /// order. Group commit uses it.
    async fn insert_batch(
        &self,
        tasks: Vec<NewTask>,
        created_at: DateTime<Utc>,
    ) -> Vec<Result<InsertOutcome, StoreError>>;

    /// Stores a submission that failed validation as a task already `failed` (error kind
    /// `validation`, `reason` as its message), never published; idempotent like [`Self::insert`].
    async fn insert_refused(&self, task: NewTask, reason: &str) -> Result<InsertOutcome, StoreError>;

    async fn get(&self, task_id: &str) -> Result<Option<TaskRecord>, StoreError>;

    /// Takes up to `limit` due publishes (owed, or a retry whose time has come, by the store's
    /// clock), oldest first: holds each for `hold` so no other relay publishes it meanwhile, and
    /// returns those this call took (one that another relay took in between is left out); each
    /// record's `publish_due_at` is its hold, what [`Self::publish_confirmed_many`] matches.
    async fn take_due_publishes(&self, hold: std::time::Duration, limit: u32) -> Result<Vec<TaskRecord>, StoreError>;

    /// Writes down, as one debt named `debt_id`, that the tasks the intake stores with a
    /// `created_at` in `created` owe their publish from `due_at`. Written before any of them is
    /// stored, so no task is stored without either a debt or its message; one small document
    /// for a stretch of time instead of a write to every task.
    async fn owe_publishes(
        &self,
        debt_id: &str,
        created: std::ops::Range<DateTime<Utc>>,
        due_at: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// Every publish of debt `debt_id` was confirmed: the debt is gone.
    async fn settle_publishes(&self, debt_id: &str) -> Result<(), StoreError>;

    /// Debts due by the store's clock (their writer never settled them: it stopped, or a publish
    /// or insert failed) pass to their tasks: each task created in a debt's range and still
    /// queued owes its publish from now, and the debt is gone. Up to `limit` debts; returns how
    /// many tasks became owed.
    async fn pass_on_due_debts(&self, limit: u32) -> Result<u64, StoreError>;

    /// `publish_confirmed` for many tasks whose publishes were held until some time in
    /// `held` (inclusive); a task whose hold is outside it (re-taken since) keeps its debt.
    async fn publish_confirmed_many(
        &self,
        task_ids: &[String],
        held: std::ops::RangeInclusive<DateTime<Utc>>,
    ) -> Result<(), StoreError>;

    /// queued/retrying (and due by the store's clock) → processing for one more attempt, leased
    /// for `lease` from the store's now. `None` when the task is not claimable (already claimed,
    /// final, cancelled, not yet due, or unknown).
    async fn claim(&self, task_id: &str, lease: std::time::Duration) -> Result<Option<TaskRecord>, StoreError>;

    /// Claims many tasks at once (same rules as `claim`, one lease for all); returns those
    /// claimed. Group commit for consumers.
    async fn claim_batch(
        &self,
        task_ids: Vec<String>,
        lease: std::time::Duration,
    ) -> Result<Vec<TaskRecord>, StoreError>;

    /// A delivery found `task_id` retrying and not yet due: make sure a publish stays owed for
    /// when it is due, so that dropping the early message loses nothing.
    async fn keep_publish_owed(&self, task_id: &str) -> Result<(), StoreError>;

    /// Records many attempt ends at once; one result per item, in order.
    async fn finish_batch(&self, finishes: Vec<Finish>) -> Vec<Result<Finished, StoreError>>;

    /// Appends processing steps (and sets the substatus) while `attempt` still holds the task.
    async fn record_progress(
        &self,
        task_id: &str,
        attempt: u32,
        substatus: Option<String>,
        steps: Vec<ProcessingStep>,
    ) -> Result<(), StoreError>;

    /// Records how `attempt` ended (it ran `elapsed_ms`): the updated task, or `None` if the
    /// task no longer belongs to that attempt.
    /// `steps` are processing steps not yet written, stored in the same update.
    async fn finish(
        &self,
        task_id: &str,
        attempt: u32,
        elapsed_ms: i64,
        steps: Vec<ProcessingStep>,
        outcome: AttemptOutcome,
    ) -> Result<Option<TaskRecord>, StoreError>;

    /// Processing tasks whose lease has ended by the store's clock: back to retrying (due now),
    /// or failed when no attempts remain. Returns how many were moved.
    async fn expire_leases(&self) -> Result<u64, StoreError>;

    /// Shutdown: gives back a task whose `attempt` is still running: retrying, due now. The
    /// interrupted attempt does not count against the task's attempts (it is given one more), so
    /// a deploy never fails a task on its last attempt without having run it. `false` if the
    /// attempt is over.
    async fn release(&self, task_id: &str, attempt: u32) -> Result<bool, StoreError>;

    /// `DELETE /tasks/{id}`: queued/retrying → cancelled; `by` goes on the audit trail.
    async fn cancel(&self, task_id: &str, by: &str) -> Result<TaskRecord, TransitionError>;

    /// `POST /tasks/{id}/retry`: failed/cancelled → queued, attempts reset, its publish held for
    /// `hold` (the caller publishes it); `by` goes on the audit trail. With `unreported_only`, a
    /// Camunda-linked task is taken only while its report has failed for good (Camunda got no
    /// outcome, so a new run may report).
    async fn manual_retry(
        &self,
        task_id: &str,
        hold: std::time::Duration,
        by: &str,
        unreported_only: bool,
    ) -> Result<TaskRecord, TransitionError>;

    /// `POST /tasks/{id}/report`: a `report_failed` report is owed again, due now.
    async fn resend_report(&self, task_id: &str, by: &str) -> Result<TaskRecord, TransitionError>;

    /// Final tasks whose Camunda report is owed and about due by the store's clock, most overdue
    /// first: candidates only; [`Self::take_report`] decides by the store's clock.
    async fn due_reports(&self, limit: u32) -> Result<Vec<TaskRecord>, StoreError>;

    /// Takes an owed report if it is due by the store's clock: holds it for `hold` from the
    /// store's now so no other reporter sends it meanwhile, and counts the send about to start in
    /// `camunda.report_attempts`. The task as taken; `None` if it is not due, held by another
    /// reporter, or no longer owed.
    async fn take_report(&self, task_id: &str, hold: std::time::Duration) -> Result<Option<TaskRecord>, StoreError>;

    /// Owed and given-up reports, counted through the report index (cost: the backlog of owed
    /// reports, not the collection).
    async fn report_counts(&self) -> Result<ReportCounts, StoreError>;

    /// Records what became of a report attempt.
    async fn record_report(&self, task_id: &str, outcome: ReportOutcome) -> Result<(), StoreError>;

    /// Tasks from `source` not yet final (pull mode's capacity check).
    async fn count_unfinished(&self, source: TaskSource) -> Result<u64, StoreError>;

    /// Pulled tasks whose report is still pending (running, or final with the report owed) and
    /// whose Camunda lock runs out before `before`.
    async fn locks_expiring(&self, before: DateTime<Utc>, limit: u32) -> Result<Vec<TaskRecord>, StoreError>;

    async fn set_lock_expiry(&self, task_id: &str, at: DateTime<Utc>) -> Result<(), StoreError>;

    /// Queued pulled tasks that no attempt has started, locked by the replica `pulled_by`.
    async fn unstarted(&self, pulled_by: &str, limit: u32) -> Result<Vec<TaskRecord>, StoreError>;

    async fn list(&self, query: &ListQuery) -> Result<Vec<TaskRecord>, StoreError>;

    async fn statistics(&self) -> Result<Statistics, StoreError>;

    /// Keeps a dead-lettered message's record for `retention` (then the store drops it).
    async fn record_dead_letter(&self, letter: DeadLetter, retention: std::time::Duration) -> Result<(), StoreError>;

    /// A task whose message was dead-lettered: if it is still `queued` or `retrying`, its publish
    /// falls due now by the store's clock (a retry not yet due: when it falls due), so the relay
    /// sends it again. Whether it was.
    async fn republish_dead_lettered(&self, task_id: &str) -> Result<bool, StoreError>;

    /// Dead letters, newest first.
    async fn dead_letters(&self, query: &DeadLetterQuery) -> Result<Vec<DeadLetter>, StoreError>;

    /// Tasks that should have a message in the broker and have waited longer than `after` by the
    /// store's clock without a delivery (queued since, or retrying and due since, with no publish
    /// owed), per topic, with how many of them were re-sent within `after` (`crate::resend`).
    async fn count_stale(&self, after: std::time::Duration) -> Result<Vec<StaleCount>, StoreError>;

    /// Re-sends up to `limit` stale tasks of `topic` (as [`Self::count_stale`] counts them) not
    /// re-sent within `after`, oldest first: each is marked (`republished_at`, `republish_count`)
    /// and owes its publish from now, so the relay's next take sends it. How many this call marked.
    async fn republish_stale(&self, topic: &str, after: std::time::Duration, limit: u32) -> Result<u64, StoreError>;

    /// Idempotent resubmits: those of `task_ids` still queued, never claimed, owing no publish and
    /// created longer than `grace` ago owe their publish from now (their first message may be
    /// lost; a duplicate is skipped by the claim). How many.
    async fn owe_publish_again(&self, task_ids: &[String], grace: std::time::Duration) -> Result<u64, StoreError>;

    /// Retention: final tasks of `scope` whose Camunda report is settled (never one still owed;
    /// one given up, `report_failed`, is settled) and that completed at least `retention` ago get `expire_at` =
    /// `completed_at` + `retention`, which the store's TTL index deletes them by. Up to `limit`
    /// tasks; how many were marked.
    async fn mark_expired(
        &self,
        scope: &TopicScope,
        retention: std::time::Duration,
        limit: u32,
    ) -> Result<u64, StoreError>;
}
