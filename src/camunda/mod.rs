//! Camunda 7 integration: the REST client, typed-variable conversion, the reporter that delivers
//! final outcomes exactly once (report mode, `CAMUNDA_URL` set), and the pull-mode poller. Without
//! `CAMUNDA_URL` nothing here runs and workers report to Camunda themselves (the seed's flow).

mod bpmn;
mod client;
mod poller;
mod report_gauges;
mod report_policy;
mod reporter;
mod rest;
pub mod variables;

pub use bpmn::ErrorCatchers;
pub use client::{CamundaClient, CamundaError, ExternalTaskInfo, LockedTask, TaskFate};
pub use poller::Poller;
pub use report_policy::ReportPolicy;
pub use reporter::Reporter;
