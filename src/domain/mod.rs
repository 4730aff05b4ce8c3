//! Domain values: identifiers that cannot be invalid once parsed, the task state machine, and the
//! validated submission. Nothing here performs I/O.

mod ids;
mod status;
mod submission;

pub use ids::{IdError, TaskId, TopicName, WorkerId};
pub use status::{Event, StatusLabels, TaskStatus, Transition};
pub use submission::{FieldError, Limits, Submission};
