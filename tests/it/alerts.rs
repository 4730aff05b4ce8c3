//! The alert rules in the repository (docs/prometheus-alerts.yml) name only series the gateway
//! exports: a renamed metric would otherwise leave an alert that can never fire.

use std::collections::BTreeSet;

use crate::helpers::spawn_app;

/// `gateway_*` names in a text, with a counter sample's `_total` taken off.
fn gateway_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (start, _) in text.match_indices("gateway_") {
        let name: String =
            text[start..].chars().take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_').collect();
        names.insert(name.trim_end_matches("_total").to_owned());
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_an_alert_rule_names_is_exported() {
    let rules = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/prometheus-alerts.yml"))
        .expect("the alert rules are in the repository");
    assert!(rules.matches("- alert: ").count() >= 8, "the rules file lists its alerts");
    let wanted = gateway_names(&rules);
    assert!(wanted.len() >= 6, "{wanted:?}");

    let app = spawn_app().await;
    let body = app.client.get(app.url("/metrics")).send().await.expect("answers").text().await.expect("text");
    let typed: BTreeSet<String> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(|n| n.trim_end_matches("_total").to_owned())
        .collect();
    let missing: Vec<&String> = wanted.iter().filter(|n| !typed.contains(*n)).collect();
    assert!(missing.is_empty(), "alert rules name metrics /metrics does not export: {missing:?}\nexported: {typed:?}");
    app.cleanup().await;
}
