//! Redaction: connection URLs carry passwords, and a password must never reach a log line
//! or an error message.

/// `scheme://user:secret@host/…` → `scheme://user:***@host/…`; other text is unchanged.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let authority_start = scheme_end + 3;
    let rest = &url[authority_start..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &rest[..at];
    match userinfo.find(':') {
        Some(colon) => format!("{}{}:***{}", &url[..authority_start], &userinfo[..colon], &rest[at..]),
        None => url.to_owned(),
    }
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
    fn an_at_sign_in_the_path_is_not_userinfo() {
        assert_eq!(redact_url("amqp://host/vhost@x"), "amqp://host/vhost@x");
    }
}
