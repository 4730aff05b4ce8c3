//! Which text format a scrape gets, and the Prometheus 0.0.4 form of the registry's output.
//! `prometheus-client` writes OpenMetrics 1.0 only; Prometheus' own 0.0.4 parser, reading that,
//! takes `# TYPE x counter` followed by samples named `x_total` for two families and the counters
//! end up untyped. So a scraper that asks for OpenMetrics (`Accept`) gets it as written, and every
//! other one gets the same samples rewritten as 0.0.4 text. This module only rewrites text; it
//! owns no metric.

/// The exposition formats `/metrics` serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exposition {
    /// OpenMetrics 1.0.0 (`application/openmetrics-text`), what the registry writes.
    OpenMetrics,
    /// The Prometheus text format 0.0.4 (`text/plain`), for every other client.
    Prometheus,
}

impl Exposition {
    /// Picks the format from an `Accept` header: OpenMetrics when the client accepts
    /// `application/openmetrics-text` (no version, or 1.0.0) at least as much as plain text;
    /// 0.0.4 otherwise, and when there is no header (curl, browsers, old scrapers).
    pub fn negotiate(accept: Option<&str>) -> Self {
        let (mut openmetrics, mut text) = (0.0_f32, 0.0_f32);
        for range in accept.unwrap_or_default().split(',') {
            let mut parts = range.split(';').map(str::trim);
            let essence = parts.next().unwrap_or_default().to_ascii_lowercase();
            let (mut q, mut version) = (1.0_f32, None);
            for param in parts {
                let Some((key, value)) = param.split_once('=') else { continue };
                let value = value.trim().trim_matches('"');
                match key.trim().to_ascii_lowercase().as_str() {
                    "q" => q = value.parse().unwrap_or(0.0),
                    "version" => version = Some(value.to_owned()),
                    _ => {}
                }
            }
            match essence.as_str() {
                "application/openmetrics-text" if version.as_deref().is_none_or(|v| v == "1.0.0") => {
                    openmetrics = openmetrics.max(q)
                }
                "text/plain" | "text/*" | "*/*" => text = text.max(q),
                _ => {}
            }
        }
        if openmetrics > 0.0 && openmetrics >= text { Self::OpenMetrics } else { Self::Prometheus }
    }

    /// The `Content-Type` of a body in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Self::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// Rewrites an OpenMetrics exposition as Prometheus text 0.0.4: a counter family `x` becomes
/// `x_total` in its `HELP` and `TYPE` lines (its samples are already named `x_total`), an info
/// family `x` a gauge `x_info`, other OpenMetrics-only types `untyped`; `# UNIT`, `# EOF`,
/// `_created` samples and exemplars go, having no 0.0.4 form. (The registry writes no
/// timestamps, whose units differ between the two.)
pub fn to_prometheus_text(openmetrics: &str) -> String {
    // The registry writes HELP before TYPE, so learn every family's type first.
    let types: std::collections::HashMap<&str, &str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .collect();
    let renamed = |name: &str| match types.get(name).copied() {
        Some("counter") => format!("{name}_total"),
        Some("info") => format!("{name}_info"),
        _ => name.to_owned(),
    };
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if let Some((name, help)) = line.strip_prefix("# HELP ").and_then(|rest| rest.split_once(' ')) {
            out.push_str(&format!("# HELP {} {help}\n", renamed(name)));
        } else if let Some((name, kind)) = line.strip_prefix("# TYPE ").and_then(|rest| rest.split_once(' ')) {
            let kind = match kind {
                "counter" | "gauge" | "histogram" | "summary" => kind,
                "info" => "gauge",
                _ => "untyped",
            };
            out.push_str(&format!("# TYPE {} {kind}\n", renamed(name)));
        } else if line.starts_with('#') || line.is_empty() {
            // `# EOF`, `# UNIT`: OpenMetrics only.
        } else {
            let sample = without_exemplar(line);
            let name = sample.split(['{', ' ']).next().unwrap_or_default();
            let created = name.strip_suffix("_created").is_some_and(|family| types.get(family) == Some(&"counter"));
            if !created {
                out.push_str(sample);
                out.push('\n');
            }
        }
    }
    out
}

/// A sample line up to its value: an exemplar (` # {labels} value`) cut off. The label block
/// is skipped with its quoted values, which may hold `#` themselves.
fn without_exemplar(line: &str) -> &str {
    let mut in_quotes = false;
    let mut escaped = false;
    // A label block opens right after the name (an exemplar's braces come after the value).
    let mut labels_done = line.find(['{', ' ']).is_none_or(|i| line[i..].starts_with(' '));
    for (i, c) in line.char_indices() {
        if !labels_done {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_quotes = !in_quotes,
                '}' if !in_quotes => labels_done = true,
                _ => {}
            }
        } else if line[i..].starts_with(" # ") {
            return &line[..i];
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPENMETRICS: &str = "# HELP gw_submits Accepted task submissions.\n\
        # TYPE gw_submits counter\n\
        gw_submits_total{topic=\"a # b\",result=\"created\"} 2\n\
        gw_submits_created{topic=\"a # b\",result=\"created\"} 1700000000.0\n\
        # HELP gw_reports_seconds Reports.\n\
        # TYPE gw_reports_seconds counter\n\
        # UNIT gw_reports_seconds seconds\n\
        gw_reports_seconds_total 1 # {user_id=\"42\"} 1.0\n\
        # HELP gw_build Build.\n\
        # TYPE gw_build info\n\
        gw_build_info{version=\"1\"} 1\n\
        # HELP gw_in_flight Handlers running now.\n\
        # TYPE gw_in_flight gauge\n\
        gw_in_flight{topic=\"say_hello\"} 0\n\
        # HELP gw_batch Tasks per batch.\n\
        # TYPE gw_batch histogram\n\
        gw_batch_sum 3.0\n\
        gw_batch_count 3\n\
        gw_batch_bucket{le=\"+Inf\"} 3\n\
        # EOF\n";

    #[test]
    fn counters_are_typed_under_their_sample_names_and_openmetrics_only_lines_go() {
        let text = to_prometheus_text(OPENMETRICS);
        let expected = "# HELP gw_submits_total Accepted task submissions.\n\
            # TYPE gw_submits_total counter\n\
            gw_submits_total{topic=\"a # b\",result=\"created\"} 2\n\
            # HELP gw_reports_seconds_total Reports.\n\
            # TYPE gw_reports_seconds_total counter\n\
            gw_reports_seconds_total 1\n\
            # HELP gw_build_info Build.\n\
            # TYPE gw_build_info gauge\n\
            gw_build_info{version=\"1\"} 1\n\
            # HELP gw_in_flight Handlers running now.\n\
            # TYPE gw_in_flight gauge\n\
            gw_in_flight{topic=\"say_hello\"} 0\n\
            # HELP gw_batch Tasks per batch.\n\
            # TYPE gw_batch histogram\n\
            gw_batch_sum 3.0\n\
            gw_batch_count 3\n\
            gw_batch_bucket{le=\"+Inf\"} 3\n";
        assert_eq!(text, expected);
    }

    #[test]
    fn accept_chooses_the_format() {
        let prometheus_scraper = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
            version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        for (accept, want) in [
            (None, Exposition::Prometheus),
            (Some("*/*"), Exposition::Prometheus),
            (Some("text/plain"), Exposition::Prometheus),
            (Some("application/openmetrics-text"), Exposition::OpenMetrics),
            (Some("application/openmetrics-text; version=1.0.0"), Exposition::OpenMetrics),
            (Some(prometheus_scraper), Exposition::OpenMetrics),
            (Some("text/plain;version=0.0.4;q=0.9,application/openmetrics-text;q=0.5"), Exposition::Prometheus),
            (Some("application/openmetrics-text;version=0.0.1"), Exposition::Prometheus),
            (Some("application/openmetrics-text;q=0"), Exposition::Prometheus),
        ] {
            assert_eq!(Exposition::negotiate(accept), want, "{accept:?}");
        }
    }
}
