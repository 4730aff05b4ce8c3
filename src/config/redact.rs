//! Masking the secrets a URI may carry, for every place a URI is logged or shown (start-up logs,
//! `/topics`, `Debug` of settings). It decides what is secret; it never sees where the result goes.

/// The URI with its secrets masked, safe to log or show. The rule (docs/security.md):
/// - user info: a password becomes `***` (the user name stays, it names the account); a user name
///   without a password becomes `***` too (a lone user name is how many services take a token);
/// - query: every value becomes `***` and a parameter without `=` becomes `***`; the names stay,
///   so an operator sees which parameters are set (`?api_key=***&page=***`);
/// - fragment: `***` (OAuth's implicit flow puts `access_token` there);
/// - scheme, host, port and path are shown as they are: a secret in a path cannot be told apart
///   from a route, so secrets belong in the user info or the query.
///
/// A URI that does not parse as one URL (a MongoDB seed list `host1,host2`) has everything
/// between `://` and its last `@` masked, and its query as above.
pub fn redact_uri(uri: &str) -> String {
    let Ok(mut url) = url::Url::parse(uri) else { return redact_unparsed(uri) };
    // Setting user info only fails for URLs that cannot have it, which then have none to hide.
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    } else if !url.username().is_empty() {
        let _ = url.set_username("***");
    }
    if let Some(query) = url.query().map(redact_query) {
        url.set_query(Some(&query));
    }
    if url.fragment().is_some_and(|f| !f.is_empty()) {
        url.set_fragment(Some("***"));
    }
    url.to_string()
}

/// `a=1&b&c=` → `a=***&***&c=***`.
fn redact_query(query: &str) -> String {
    let masked = query.split('&').map(|pair| match pair.split_once('=') {
        Some((name, _)) => format!("{name}=***"),
        None if pair.is_empty() => String::new(),
        None => "***".to_owned(),
    });
    masked.collect::<Vec<_>>().join("&")
}

/// For what `url` cannot parse: the last `@` ends the user info even when a password holds `?`,
/// `/` or `@` unencoded (masking too much beats showing a password).
fn redact_unparsed(uri: &str) -> String {
    let (head, rest) = match (uri.find("://"), uri.rfind('@')) {
        (Some(s), Some(at)) if at > s => (format!("{}***@", &uri[..s + 3]), &uri[at + 1..]),
        _ => (String::new(), uri),
    };
    let (rest, fragment) = match rest.split_once('#') {
        Some((before, _)) => (before, "#***"),
        None => (rest, ""),
    };
    let rest = match rest.split_once('?') {
        Some((before, query)) => format!("{before}?{}", redact_query(query)),
        None => rest.to_owned(),
    };
    format!("{head}{rest}{fragment}")
}

#[cfg(test)]
mod tests {
    use super::redact_uri;

    #[test]
    fn a_password_is_masked_and_its_user_name_kept() {
        assert_eq!(
            redact_uri("http://camunda:s3cret@engine:8080/engine-rest"),
            "http://camunda:***@engine:8080/engine-rest"
        );
        assert_eq!(redact_uri("amqps://gw:p%40ss@rabbit/%2f"), "amqps://gw:***@rabbit/%2f");
    }

    #[test]
    fn a_lone_user_name_is_masked_as_it_may_be_a_token() {
        assert_eq!(redact_uri("https://ghp_abc123@hooks.example/run"), "https://***@hooks.example/run");
    }

    #[test]
    fn every_query_value_is_masked_and_the_names_stay() {
        let shown = redact_uri("https://svc.example/hook?api_key=K3y&token=T0k&page=2&flag&sig=");
        assert_eq!(shown, "https://svc.example/hook?api_key=***&token=***&page=***&***&sig=***");
        for secret in ["K3y", "T0k", "flag"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
    }

    #[test]
    fn a_fragment_is_masked() {
        assert_eq!(redact_uri("https://a.example/cb#access_token=xyz"), "https://a.example/cb#***");
    }

    #[test]
    fn a_uri_without_secrets_is_shown_as_it_is() {
        for uri in ["http://127.0.0.1:9000/run", "mongodb://db:27017", "http://engine:8080/engine-rest"] {
            assert_eq!(redact_uri(uri), uri);
        }
    }

    #[test]
    fn an_unparsable_seed_list_loses_its_user_info_and_query_values() {
        assert_eq!(redact_uri("mongodb://u:p@h1:1,h2:2/db"), "mongodb://***@h1:1,h2:2/db");
        let shown = redact_uri("mongodb://u:pa?ss@h1:1,h2:2/db?replicaSet=rs0&tlsCertificateKeyFilePassword=Pw");
        assert_eq!(shown, "mongodb://***@h1:1,h2:2/db?replicaSet=***&tlsCertificateKeyFilePassword=***");
        assert_eq!(redact_uri("mongodb://h1:1,h2:2/db?x=1#frag"), "mongodb://h1:1,h2:2/db?x=***#***");
    }
}
