//! Redaction: connection URLs carry passwords, and a password must never reach a log line
//! or an error message.

/// `scheme://user:secret@host/…` → `scheme://user:***@host/…`; a `password=` query
/// parameter (which libpq and sqlx accept) is masked too. Text that is not such a URL but
/// holds an `@`, such as the mistyped `amqp:user:secret@host`, keeps only what precedes
/// its first `:`; other text is unchanged.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return redact_malformed(url);
    };
    let authority_start = scheme_end + 3;
    let rest = &url[authority_start..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let redacted = match rest[..authority_end].rfind('@') {
        Some(at) => match rest[..at].find(':') {
            Some(colon) => format!("{}{}:***{}", &url[..authority_start], &rest[..colon], &rest[at..]),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    };
    redact_password_parameter(&redacted)
}

fn redact_malformed(text: &str) -> String {
    match (text.find(':'), text.rfind('@')) {
        (Some(colon), Some(at)) if colon < at => format!("{}:***{}", &text[..colon], &text[at..]),
        _ => text.to_owned(),
    }
}

/// Masks the value of every `password=` parameter in the query string.
fn redact_password_parameter(url: &str) -> String {
    let Some(query_start) = url.find('?') else {
        return url.to_owned();
    };
    let (base, query) = url.split_at(query_start + 1);
    let (query, fragment) = query.split_at(query.find('#').unwrap_or(query.len()));
    let parameters: Vec<String> = query
        .split('&')
        .map(|parameter| match parameter.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
            _ => parameter.to_owned(),
        })
        .collect();
    format!("{base}{}{fragment}", parameters.join("&"))
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn hides_the_password_only() {
        assert_eq!(
            redact_url("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact_url("postgres://u:p%40ss@db/opflow?sslmode=require"),
            "postgres://u:***@db/opflow?sslmode=require"
        );
    }

    #[test]
    fn leaves_urls_without_a_password_alone() {
        for url in ["postgres://postgres@127.0.0.1:5432/opflow", "amqp://127.0.0.1", "not a url"] {
            assert_eq!(redact_url(url), url);
        }
    }

    #[test]
    fn hides_a_password_parameter() {
        assert_eq!(
            redact_url("postgres://u@db/opflow?sslmode=require&password=s3cr3t#x"),
            "postgres://u@db/opflow?sslmode=require&password=***#x"
        );
        assert_eq!(redact_url("postgres://u:a@db/o?PASSWORD=b"), "postgres://u:***@db/o?PASSWORD=***");
    }

    #[test]
    fn hides_the_password_of_a_url_without_slashes() {
        assert_eq!(redact_url("amqp:guest:s3cr3t@host:5672/%2f"), "amqp:***@host:5672/%2f");
        assert_eq!(redact_url("guest:s3cr3t@host"), "guest:***@host");
    }

    #[test]
    fn an_at_sign_in_the_path_is_not_userinfo() {
        assert_eq!(redact_url("amqp://host/vhost@x"), "amqp://host/vhost@x");
    }
}
