//! The two edges of one Camunda REST call that a peer or a caller could abuse: the URL, where an
//! id must stay one path segment (a task id of `..` or `x/y` must not reach another resource),
//! and the answer, which is read only up to a bound. What a call means is `client`'s business.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use url::Url;

use super::client::CamundaError;

/// Everything but RFC 3986's unreserved characters is escaped in an id: `/`, `?`, `#` and `%`,
/// but also `;` (Tomcat, which serves Camunda's REST API, strips `;params` from a segment before
/// routing) and `:`.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Most bytes read of a regular answer (a task, a log, an error).
pub const ANSWER_LIMIT: usize = 1024 * 1024;
/// Most bytes read of a process definition's BPMN XML, which can be large.
pub const XML_ANSWER_LIMIT: usize = 10 * 1024 * 1024;
/// Most bytes per task read of a fetchAndLock answer: a task's variables in Camunda's typed
/// form, twice the default `MAX_BODY_BYTES` a submission may carry.
pub const FETCH_ANSWER_LIMIT_PER_TASK: usize = 2 * 1024 * 1024;

/// The URL of `segments` under `base` (`CAMUNDA_URL`), each segment percent-encoded as one, with
/// `query` added to any query `base` has (a `?token=` there reaches every call).
///
/// An empty, `.` or `..` segment is refused: no encoding carries it through, since URL parsers
/// (reqwest's included) and Camunda's servlet container both read `%2E%2E` as `..`.
pub fn endpoint(base: &str, segments: &[&str], query: &[(&str, &str)]) -> Result<Url, CamundaError> {
    if let Some(bad) = segments.iter().find(|s| matches!(**s, "" | "." | "..")) {
        return Err(CamundaError::Refused(format!("the id {bad:?} cannot name a Camunda resource in a URL path")));
    }
    let mut url = Url::parse(base).map_err(|_| CamundaError::Refused("CAMUNDA_URL is not a URL".into()))?;
    if url.cannot_be_a_base() {
        return Err(CamundaError::Refused("CAMUNDA_URL cannot take a path".into()));
    }
    let mut path = url.path().trim_end_matches('/').to_owned();
    for segment in segments {
        path.push('/');
        path.extend(utf8_percent_encode(segment, SEGMENT));
    }
    url.set_path(&path);
    if !query.is_empty() {
        url.query_pairs_mut().extend_pairs(query);
    }
    url.set_fragment(None);
    Ok(url)
}

/// Reads `response`'s body up to `limit` bytes; a larger one (declared or streamed) is an error
/// naming Camunda, and so is one cut short, rather than a silently empty answer.
pub async fn read_capped(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, CamundaError> {
    let too_large = || CamundaError::Unavailable(format!("Camunda's answer is larger than {limit} bytes; not read"));
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) if body.len() + chunk.len() > limit => return Err(too_large()),
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) => return Ok(body),
            Err(e) => return Err(CamundaError::Unavailable(format!("reading Camunda's answer: {}", e.without_url()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(segments: &[&str], query: &[(&str, &str)]) -> String {
        endpoint("http://engine:8080/engine-rest?token=t", segments, query).map(String::from).unwrap_or_default()
    }

    #[test]
    fn an_id_stays_one_segment_whatever_it_holds() {
        assert_eq!(
            path(&["external-task", "8f14e45f-ceea-11ee", "complete"], &[]),
            "http://engine:8080/engine-rest/external-task/8f14e45f-ceea-11ee/complete?token=t"
        );
        assert_eq!(
            path(&["external-task", "a..b", "complete"], &[]),
            "http://engine:8080/engine-rest/external-task/a..b/complete?token=t"
        );
        assert_eq!(
            path(&["external-task", "x/y", "unlock"], &[]),
            "http://engine:8080/engine-rest/external-task/x%2Fy/unlock?token=t"
        );
        assert_eq!(
            path(&["external-task", "a;b?c#d%2E:e", "failure"], &[]),
            "http://engine:8080/engine-rest/external-task/a%3Bb%3Fc%23d%252E%3Ae/failure?token=t"
        );
    }

    #[test]
    fn a_dot_or_empty_id_is_refused_before_any_call() {
        for id in ["..", ".", ""] {
            let refused = endpoint("http://engine/engine-rest", &["external-task", id, "complete"], &[]);
            assert!(matches!(refused, Err(CamundaError::Refused(_))), "{id:?}: {refused:?}");
        }
    }

    #[test]
    fn query_values_are_encoded_and_join_the_base_query() {
        assert_eq!(
            path(&["history", "external-task-log"], &[("externalTaskId", "a&b=c"), ("sortOrder", "desc")]),
            "http://engine:8080/engine-rest/history/external-task-log?token=t&externalTaskId=a%26b%3Dc&sortOrder=desc"
        );
    }

    #[test]
    fn a_base_without_a_path_or_with_a_trailing_slash_takes_segments_the_same() {
        let at_root = endpoint("http://engine:8080", &["engine"], &[]).map(String::from);
        assert_eq!(at_root.as_deref(), Ok("http://engine:8080/engine"));
        let slashed = endpoint("http://engine:8080/engine-rest/", &["engine"], &[]).map(String::from);
        assert_eq!(slashed.as_deref(), Ok("http://engine:8080/engine-rest/engine"));
    }
}
