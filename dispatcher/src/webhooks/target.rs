//! Where a webhook may go. A shared platform must not be a way into its own network, so
//! targets in loopback, private, link-local, unique-local, CGNAT, unspecified, multicast and
//! reserved ranges (IPv4 and IPv6, IPv4 inside IPv6 too) are refused unless the setting
//! `webhooks_allow_private` allows them.
//!
//! **The one place addresses are checked is [`refused_range`]**, used at two doors:
//! - when a subscription or a run's notify URL is accepted ([`check_url`]: a clear 400
//!   naming the setting; an administrator's subscription is resolved at once and the 400
//!   names the address, a submitter's notify URL is never resolved then, see [`Lookup`]), and
//! - on every delivery attempt, for every address a name resolves to, by the HTTP client's
//!   own resolver ([`GuardedResolver`]), so a name that resolved to a public address when it
//!   was subscribed and to a private one later (DNS rebinding) is still refused. A URL whose
//!   host is an IP literal never reaches a resolver, so [`check_literal`] checks it before
//!   each attempt. The client follows no redirects and uses no proxy (a proxy would resolve
//!   the name itself, past the resolver): see [`client`].

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use url::{Host, Url};

/// How long one delivery attempt may take, connecting included: a slow or dead receiver
/// holds one of the bounded delivery slots no longer than this.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a request that subscribes a URL waits for its name to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest target URL accepted.
pub const MAX_URL_BYTES: usize = 2048;

const SETTING_HINT: &str = "opflow refuses private and internal addresses as webhook targets; an administrator \
     can allow them with the setting `webhooks_allow_private` (OPFLOW_WEBHOOKS_ALLOW_PRIVATE=true)";

#[derive(Debug, Clone, thiserror::Error)]
pub enum TargetError {
    #[error("webhook URL `{url}` is not a URL: {reason}")]
    NotUrl { url: String, reason: String },
    #[error("webhook URL `{url}`: {reason}")]
    Unusable { url: String, reason: String },
    #[error("webhook URL `{url}`: cannot resolve `{host}` ({reason}); check the host name")]
    Unresolvable { url: String, host: String, reason: String },
    #[error("webhook target `{host}` is {addr}, a {range} address; {SETTING_HINT}")]
    Refused { host: String, addr: IpAddr, range: &'static str },
}

/// The class of range `ip` is in, if webhooks may not go there by default; `None` for an
/// ordinary public address.
pub fn refused_range(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => refused_v4(v4),
        IpAddr::V6(v6) => refused_v6(v6),
    }
}

fn refused_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    Some(match (a, b) {
        _ if ip.is_unspecified() || a == 0 => "unspecified (0.0.0.0/8)",
        _ if ip.is_loopback() => "loopback (127.0.0.0/8)",
        _ if ip.is_private() => "private (10/8, 172.16/12, 192.168/16)",
        _ if ip.is_link_local() => "link-local (169.254.0.0/16)",
        (100, 64..=127) => "CGNAT shared (100.64.0.0/10)",
        _ if ip.is_multicast() => "multicast (224.0.0.0/4)",
        _ if ip.is_broadcast() || a >= 240 => "reserved (240.0.0.0/4)",
        (192, 0) if ip.octets()[2] == 0 => "IETF protocol assignments (192.0.0.0/24)",
        (198, 18..=19) => "benchmarking (198.18.0.0/15)",
        (192, 0) if ip.octets()[2] == 2 => "documentation (192.0.2.0/24)",
        (198, 51) if ip.octets()[2] == 100 => "documentation (198.51.100.0/24)",
        (203, 0) if ip.octets()[2] == 113 => "documentation (203.0.113.0/24)",
        _ => return None,
    })
}

fn refused_v6(ip: Ipv6Addr) -> Option<&'static str> {
    // IPv4 carried in IPv6 is judged as the IPv4 address it carries.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return refused_v4(v4).map(|_| "IPv4-mapped IPv6 (::ffff:0:0/96) of a refused IPv4");
    }
    let segments = ip.segments();
    let embedded_v4 = Ipv4Addr::from(((segments[6] as u32) << 16) | segments[7] as u32);
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return refused_v4(embedded_v4).map(|_| "NAT64 (64:ff9b::/96) of a refused IPv4");
    }
    if segments[..6] == [0, 0, 0, 0, 0xffff, 0] {
        return refused_v4(embedded_v4).map(|_| "IPv4-translated (::ffff:0:0:0/96) of a refused IPv4");
    }
    Some(match segments[0] {
        // Ranges that carry or reach IPv4 space through a relay or translator the
        // installation may sit behind: refused whole, as no receiver lives there.
        0x2002 => "6to4 (2002::/16)",
        0x2001 if segments[1] == 0 => "Teredo (2001::/32)",
        0x2001 if segments[1] == 0x0db8 => "documentation (2001:db8::/32)",
        0x64 if segments[1] == 0xff9b && segments[2] == 1 => "local-use NAT64 (64:ff9b:1::/48)",
        0x100 if segments[1..4] == [0, 0, 0] => "discard-only (100::/64)",
        _ if ip.is_unspecified() => "unspecified (::)",
        _ if ip.is_loopback() => "loopback (::1)",
        s if s & 0xfe00 == 0xfc00 => "unique-local (fc00::/7)",
        s if s & 0xffc0 == 0xfe80 => "link-local (fe80::/10)",
        s if s & 0xffc0 == 0xfec0 => "site-local (fec0::/10)",
        s if s & 0xff00 == 0xff00 => "multicast (ff00::/8)",
        // The deprecated IPv4-compatible form ::a.b.c.d.
        0 if segments[1..6] == [0; 5] => "IPv4-compatible IPv6 (::/96)",
        _ => return None,
    })
}

/// Refuses `ip` for `host` unless private targets are allowed.
fn check_addr(host: &str, ip: IpAddr, allow_private: bool) -> Result<(), TargetError> {
    match refused_range(ip) {
        Some(range) if !allow_private => Err(TargetError::Refused { host: host.to_owned(), addr: ip, range }),
        _ => Ok(()),
    }
}

/// Whether accepting a URL may resolve its host name now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// An administrator subscribes: the name is resolved, and a refusal names the address
    /// it resolved to, so a mistake is found at once.
    Now,
    /// A submitter gives a run's notify URL: no lookup (an answer naming the address a
    /// name resolves to would map the internal network for anyone who can submit). An IP
    /// literal is checked now; a name is checked by the resolver on every attempt.
    AtDelivery,
}

/// Parses and checks a target URL when it is subscribed or given as a run's notify URL:
/// `http` or `https`, a host, no credentials, and (with [`Lookup::Now`]) every address it
/// resolves to allowed.
pub async fn check_url(text: &str, allow_private: bool, lookup: Lookup) -> Result<Url, TargetError> {
    let url = parse(text)?;
    match url.host() {
        Some(Host::Domain(_)) if lookup == Lookup::AtDelivery => {}
        Some(Host::Domain(name)) => {
            let port = url.port_or_known_default().unwrap_or(443);
            let unresolvable = |reason: String| TargetError::Unresolvable {
                url: text.to_owned(),
                host: name.to_owned(),
                reason,
            };
            let addrs = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((name, port)))
                .await
                .map_err(|_| unresolvable(format!("no answer within {RESOLVE_TIMEOUT:?}")))?
                .map_err(|e| unresolvable(e.to_string()))?;
            for addr in addrs {
                check_addr(name, addr.ip(), allow_private)?;
            }
        }
        _ => check_literal(&url, allow_private)?,
    }
    Ok(url)
}

fn parse(text: &str) -> Result<Url, TargetError> {
    let unusable = |reason: &str| TargetError::Unusable { url: text.to_owned(), reason: reason.to_owned() };
    if text.len() > MAX_URL_BYTES {
        return Err(unusable(&format!("is over {MAX_URL_BYTES} bytes")));
    }
    let url =
        Url::parse(text).map_err(|e| TargetError::NotUrl { url: text.to_owned(), reason: e.to_string() })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(unusable("use an http:// or https:// URL"));
    }
    if url.host().is_none() {
        return Err(unusable("has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(unusable("holds credentials; authenticate receivers by the webhook signature instead"));
    }
    Ok(url)
}

/// Checks a URL whose host is an IP literal (which no resolver sees); other hosts pass,
/// their addresses are checked by [`GuardedResolver`] as they are resolved.
pub fn check_literal(url: &Url, allow_private: bool) -> Result<(), TargetError> {
    match url.host() {
        Some(Host::Ipv4(ip)) => check_addr(&ip.to_string(), IpAddr::V4(ip), allow_private),
        Some(Host::Ipv6(ip)) => check_addr(&ip.to_string(), IpAddr::V6(ip), allow_private),
        _ => Ok(()),
    }
}

/// The HTTP client's resolver: the system's, with refused addresses dropped. A name left
/// with no address fails the attempt, saying which address was refused and why.
#[derive(Debug, Clone, Copy)]
pub struct GuardedResolver {
    pub allow_private: bool,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = None;
            let allowed: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|addr| match check_addr(&host, addr.ip(), allow_private) {
                    Ok(()) => true,
                    Err(error) => {
                        refused.get_or_insert(error);
                        false
                    }
                })
                .collect();
            if allowed.is_empty() {
                let error: Box<dyn std::error::Error + Send + Sync> = match refused {
                    Some(refused) => Box::new(refused),
                    None => format!("`{host}` resolved to no address").into(),
                };
                return Err(error);
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The client every delivery uses: the guarded resolver, no redirects (a redirect could
/// point anywhere), no proxy, the attempt timeout, rustls with the ring provider.
pub fn client(allow_private: bool) -> Result<reqwest::Client, reqwest::Error> {
    // `opflow_process::init` installed it already; tests build clients without it.
    opflow_process::install_tls_provider();
    reqwest::Client::builder()
        .dns_resolver(Arc::new(GuardedResolver { allow_private }))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(ATTEMPT_TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT)
        .user_agent(concat!("opflow-webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(ip: &str) -> Option<&'static str> {
        refused_range(ip.parse().unwrap())
    }

    #[test]
    fn webhook_target_refuses_loopback() {
        assert!(range("127.0.0.1").unwrap().contains("loopback"));
        assert!(range("127.255.1.2").unwrap().contains("loopback"));
        assert!(range("::1").unwrap().contains("loopback"));
    }

    #[test]
    fn webhook_target_refuses_private() {
        for ip in ["10.0.0.1", "172.16.0.1", "172.31.255.254", "192.168.1.1"] {
            assert!(range(ip).unwrap().contains("private"), "{ip}");
        }
        assert_eq!(range("172.32.0.1"), None);
    }

    #[test]
    fn webhook_target_refuses_link_local() {
        assert!(range("169.254.169.254").unwrap().contains("link-local"));
        assert!(range("fe80::1").unwrap().contains("link-local"));
    }

    #[test]
    fn webhook_target_refuses_unique_local() {
        assert!(range("fc00::1").unwrap().contains("unique-local"));
        assert!(range("fd12:3456::1").unwrap().contains("unique-local"));
    }

    #[test]
    fn webhook_target_refuses_cgnat() {
        assert!(range("100.64.0.1").unwrap().contains("CGNAT"));
        assert!(range("100.127.255.254").unwrap().contains("CGNAT"));
        assert_eq!(range("100.128.0.1"), None);
    }

    #[test]
    fn webhook_target_refuses_unspecified() {
        assert!(range("0.0.0.0").unwrap().contains("unspecified"));
        assert!(range("0.1.2.3").unwrap().contains("unspecified"));
        assert!(range("::").unwrap().contains("unspecified"));
    }

    #[test]
    fn webhook_target_refuses_multicast_and_reserved() {
        assert!(range("224.0.0.1").unwrap().contains("multicast"));
        assert!(range("239.255.255.250").unwrap().contains("multicast"));
        assert!(range("ff02::1").unwrap().contains("multicast"));
        assert!(range("255.255.255.255").unwrap().contains("reserved"));
        assert!(range("240.0.0.1").unwrap().contains("reserved"));
    }

    #[test]
    fn webhook_target_refuses_ipv4_inside_ipv6() {
        assert!(range("::ffff:127.0.0.1").unwrap().contains("IPv4-mapped"));
        assert!(range("::ffff:10.1.2.3").unwrap().contains("IPv4-mapped"));
        assert!(range("64:ff9b::a9fe:a9fe").unwrap().contains("NAT64"));
        assert!(range("::127.0.0.1").unwrap().contains("IPv4-compatible"));
        assert!(range("::ffff:0:0").unwrap().contains("IPv4-mapped"));
        assert!(range("::ffff:0:7f00:1").unwrap().contains("IPv4-translated"));
        assert_eq!(range("::ffff:8.8.8.8"), None);
    }

    #[test]
    fn webhook_target_refuses_ranges_that_relay_to_ipv4() {
        assert!(range("2002:7f00:1::1").unwrap().contains("6to4"));
        assert!(range("2002:808:808::1").unwrap().contains("6to4"));
        assert!(range("2001:0:4136:e378:8000:63bf:3fff:fdd2").unwrap().contains("Teredo"));
        assert!(range("64:ff9b:1::a00:1").unwrap().contains("local-use NAT64"));
        assert!(range("100::1").unwrap().contains("discard"));
        assert_eq!(range("2001:1::1"), None, "2001:1::/32 is not Teredo");
    }

    #[test]
    fn webhook_target_refuses_documentation_ranges() {
        for ip in ["192.0.2.1", "198.51.100.7", "203.0.113.255", "2001:db8::1"] {
            assert!(range(ip).unwrap().contains("documentation"), "{ip}");
        }
        assert_eq!(range("203.0.114.1"), None);
    }

    #[test]
    fn webhook_target_allows_public_addresses() {
        for ip in ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "2001:4860:4860::8888"] {
            assert_eq!(range(ip), None, "{ip}");
        }
    }

    #[tokio::test]
    async fn webhook_url_check_names_the_address_and_the_setting() {
        for url in [
            "http://127.0.0.1:8080/hook",
            "http://[::1]/hook",
            "http://[::ffff:127.0.0.1]/hook",
            "http://2130706433/hook",
            "http://localhost/hook",
        ] {
            let error = check_url(url, false, Lookup::Now).await.unwrap_err().to_string();
            assert!(error.contains("webhooks_allow_private"), "{url}: {error}");
            assert!(
                error.contains("127.0.0.1") || error.contains("::1") || error.contains("::ffff"),
                "{error}"
            );
        }
        assert!(check_url("http://127.0.0.1:8080/hook", true, Lookup::Now).await.is_ok());
        let error = check_url("ftp://example.com/", true, Lookup::Now).await.unwrap_err().to_string();
        assert!(error.contains("http://"), "{error}");
        let error = check_url("http://user:pw@127.0.0.1/", true, Lookup::Now).await.unwrap_err().to_string();
        assert!(error.contains("credentials"), "{error}");
        assert!(matches!(check_url("not a url", true, Lookup::Now).await, Err(TargetError::NotUrl { .. })));
    }

    #[tokio::test]
    async fn a_notify_url_is_not_resolved_when_it_is_given() {
        // A name that cannot resolve passes: it is looked up at delivery, by the guarded
        // resolver, and the submitter learns nothing of what it resolves to.
        let url = "http://no-such-host.invalid/hook";
        assert!(check_url(url, false, Lookup::AtDelivery).await.is_ok());
        // An IP literal is still checked at once: it reveals nothing the caller did not say.
        let error = check_url("http://[::1]/", false, Lookup::AtDelivery).await.unwrap_err().to_string();
        assert!(error.contains("loopback"), "{error}");
    }

    #[tokio::test]
    async fn webhook_resolver_drops_refused_addresses_at_delivery() {
        use reqwest::dns::Resolve;
        let refused = GuardedResolver { allow_private: false }.resolve("localhost".parse().unwrap()).await;
        let error = refused.err().expect("localhost is refused").to_string();
        assert!(error.contains("loopback") && error.contains("webhooks_allow_private"), "{error}");
        let allowed = GuardedResolver { allow_private: true }.resolve("localhost".parse().unwrap()).await;
        assert!(allowed.expect("allowed with the setting").next().is_some());
    }
}
