//! Which events a subscriber wants: `topic`, `status` (each repeatable or comma-separated) and
//! `task_id`, from the query string. Empty means "any".

use crate::domain::{FieldError, TaskStatus};

use super::TaskEvent;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    pub topics: Vec<String>,
    pub statuses: Vec<TaskStatus>,
    pub task_id: Option<String>,
}

impl Filter {
    /// Reads the filters from a raw query string; every unknown status is named.
    pub fn from_query(query: Option<&str>) -> Result<Self, Vec<FieldError>> {
        let mut filter = Self::default();
        let mut errors = Vec::new();
        let pairs = url::form_urlencoded::parse(query.unwrap_or_default().as_bytes());
        for (name, value) in pairs {
            let values = value.split(',').map(str::trim).filter(|v| !v.is_empty()).map(str::to_owned);
            match name.as_ref() {
                "topic" => filter.topics.extend(values),
                "status" => {
                    for label in values {
                        match TaskStatus::parse_label(&label) {
                            Some(status) => filter.statuses.push(status),
                            None => errors.push(FieldError::new("status", format!("unknown status {label:?}"))),
                        }
                    }
                }
                "task_id" if !value.is_empty() => filter.task_id = Some(value.into_owned()),
                _ => {}
            }
        }
        if errors.is_empty() { Ok(filter) } else { Err(errors) }
    }

    pub fn matches(&self, event: &TaskEvent) -> bool {
        (self.topics.is_empty() || self.topics.contains(&event.topic))
            && (self.statuses.is_empty() || self.statuses.contains(&event.status))
            && self.task_id.as_ref().is_none_or(|id| *id == event.task_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_combine_and_accept_lists_either_way() {
        let f = Filter::from_query(Some("topic=a,b&topic=c&status=queued,failed&task_id=t-1")).expect("valid");
        assert_eq!(f.topics, ["a", "b", "c"]);
        assert_eq!(f.statuses, [TaskStatus::Queued, TaskStatus::Failed]);
        assert_eq!(f.task_id.as_deref(), Some("t-1"));
        assert!(Filter::from_query(Some("status=nope")).is_err());
        assert_eq!(Filter::from_query(None).expect("empty"), Filter::default());
    }
}
