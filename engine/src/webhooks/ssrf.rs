//! The SSRF guard: webhook deliveries never reach internal addresses.
//!
//! A receiver URL is user input, so before connecting the host is resolved
//! and every address is vetted: loopback, private, link-local, CGNAT,
//! multicast, broadcast, unspecified, documentation, IPv4-mapped/-compatible
//! forms of those and cloud metadata addresses are refused unless an
//! allow-list entry (an IP, a CIDR, or a host name) covers them. The HTTP
//! client connects only to the vetted addresses (the resolver below is the
//! only one it uses), follows no redirects, and plain `http://` is allowed
//! only for allow-listed hosts.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Why a URL or address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    /// Not a usable URL.
    #[error("invalid webhook URL `{url}`: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// `http://` to a host that is not allow-listed.
    #[error("webhook URL `{0}` must use https (plain http is allowed only for allow-listed hosts)")]
    HttpsRequired(String),
    /// The address is internal.
    #[error(
        "refused to connect to {host} ({addr}): {kind} addresses are blocked (allow-list it to permit)"
    )]
    Blocked {
        /// Host name as written.
        host: String,
        /// The resolved address.
        addr: IpAddr,
        /// Which class of address.
        kind: &'static str,
    },
    /// DNS failed.
    #[error("cannot resolve {host}: {reason}")]
    Resolve {
        /// Host name.
        host: String,
        /// Resolver's message.
        reason: String,
    },
}

impl GuardError {
    /// The refusal in words that fit any URL (an `http` step's, a
    /// connection's), not only a webhook endpoint's.
    pub fn for_any_url(&self) -> String {
        self.to_string().replace("webhook URL", "URL")
    }
}

/// What the guard lets through.
#[derive(Debug, Clone, Default)]
pub struct GuardPolicy {
    /// Allowed networks (and single addresses as /32 or /128).
    pub allow_nets: Vec<IpNet>,
    /// Allowed host names (exact, lowercase).
    pub allow_hosts: Vec<String>,
}

impl GuardPolicy {
    /// Parses a comma-separated allow-list: IPs, CIDRs and host names.
    pub fn parse(list: &str) -> Result<GuardPolicy, String> {
        let mut p = GuardPolicy::default();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if let Ok(net) = item.parse::<IpNet>() {
                p.allow_nets.push(net);
            } else if let Ok(ip) = item.parse::<IpAddr>() {
                p.allow_nets.push(IpNet::from(ip));
            } else if item
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
            {
                p.allow_hosts.push(item.to_ascii_lowercase());
            } else {
                return Err(format!(
                    "`{item}` is not an IP address, a CIDR or a host name"
                ));
            }
        }
        Ok(p)
    }

    /// The policy from `SLUICE_WEBHOOK_ALLOW` (empty when unset).
    pub fn from_env() -> Result<GuardPolicy, String> {
        GuardPolicy::parse(&std::env::var("SLUICE_WEBHOOK_ALLOW").unwrap_or_default())
    }

    /// The networks a connection made through a connect link may reach
    /// besides public addresses: `SLUICE_CONNECT_LINK_ALLOW` (IPs, CIDRs and
    /// host names, comma-separated; empty when unset).
    pub fn for_connect_links() -> Result<GuardPolicy, String> {
        GuardPolicy::parse(&std::env::var("SLUICE_CONNECT_LINK_ALLOW").unwrap_or_default())
            .map_err(|e| format!("SLUICE_CONNECT_LINK_ALLOW: {e}"))
    }

    fn host_allowed(&self, host: &str) -> bool {
        let h = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        self.allow_hosts.contains(&h) || h.parse::<IpAddr>().is_ok_and(|ip| self.ip_allowed(ip))
    }

    fn ip_allowed(&self, ip: IpAddr) -> bool {
        self.allow_nets.iter().any(|n| n.contains(&ip))
    }

    /// Checks a URL's shape: http(s), a host, no credentials, https unless allow-listed.
    pub fn check_url(&self, url: &str) -> Result<url::Url, GuardError> {
        let invalid = |reason: &str| GuardError::InvalidUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        if url.chars().any(|c| c.is_control()) {
            return Err(invalid("it contains control characters"));
        }
        let parsed = url::Url::parse(url).map_err(|e| invalid(&e.to_string()))?;
        let host = parsed
            .host_str()
            .ok_or_else(|| invalid("it has no host"))?
            .to_string();
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(invalid("credentials in the URL are not allowed"));
        }
        match parsed.scheme() {
            "https" => {}
            "http" if self.host_allowed(&host) => {}
            "http" => return Err(GuardError::HttpsRequired(url.to_string())),
            other => return Err(invalid(&format!("scheme `{other}` is not http or https"))),
        }
        if let Ok(ip) = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            self.check_ip(&host, ip)?;
        }
        Ok(parsed)
    }

    /// Refuses internal addresses that are not allow-listed.
    pub fn check_ip(&self, host: &str, ip: IpAddr) -> Result<(), GuardError> {
        if self.ip_allowed(ip) || self.allow_hosts.contains(&host.to_ascii_lowercase()) {
            return Ok(());
        }
        match blocked_kind(ip) {
            Some(kind) => Err(GuardError::Blocked {
                host: host.to_string(),
                addr: ip,
                kind,
            }),
            None => Ok(()),
        }
    }
}

/// The class of a non-public address, or `None` for a public one.
pub fn blocked_kind(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_kind(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return v4_kind(v4).map(|_| "IPv4-mapped internal");
            }
            let seg = v6.segments();
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if v6.is_multicast() {
                Some("multicast")
            } else if seg[0] & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if seg[0] & 0xfe00 == 0xfc00 {
                Some("private (unique local)")
            } else if seg[0] == 0x2001 && seg[1] == 0x0db8 {
                Some("documentation")
            } else if seg[..6] == [0, 0, 0, 0, 0, 0] {
                Some("IPv4-compatible")
            } else if seg[0] == 0x64 && seg[1] == 0xff9b {
                Some("NAT64")
            } else if v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
                Some("metadata")
            } else {
                None
            }
        }
    }
}

fn v4_kind(v4: Ipv4Addr) -> Option<&'static str> {
    let o = v4.octets();
    if v4.is_loopback() {
        Some("loopback")
    } else if v4.is_private() {
        Some("private")
    } else if v4.is_link_local() {
        Some(if o == [169, 254, 169, 254] {
            "metadata"
        } else {
            "link-local"
        })
    } else if o[0] == 100 && (64..128).contains(&o[1]) {
        Some("CGNAT")
    } else if v4.is_multicast() {
        Some("multicast")
    } else if v4.is_broadcast() {
        Some("broadcast")
    } else if v4.is_unspecified() || o[0] == 0 {
        Some("unspecified")
    } else if v4.is_documentation() {
        Some("documentation")
    } else if o[0] >= 240 {
        Some("reserved")
    } else if o[0] == 192 && o[1] == 0 && o[2] == 0 {
        Some("IETF protocol")
    } else if o[0] == 198 && (o[1] == 18 || o[1] == 19) {
        Some("benchmarking")
    } else {
        None
    }
}

/// The resolver the delivery client uses: system DNS, then the guard.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    policy: Arc<GuardPolicy>,
}

impl GuardedResolver {
    /// A resolver applying `policy`.
    pub fn new(policy: Arc<GuardPolicy>) -> Self {
        GuardedResolver { policy }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| GuardError::Resolve {
                    host: host.clone(),
                    reason: e.to_string(),
                })?
                .collect();
            if addrs.is_empty() {
                return Err(Box::new(GuardError::Resolve {
                    host,
                    reason: "no addresses".into(),
                })
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            // Every address must pass: a name that also resolves inward is refused.
            for a in &addrs {
                policy.check_ip(&host, a.ip())?;
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_classified() {
        let cases = [
            ("127.0.0.1", Some("loopback")),
            ("10.1.2.3", Some("private")),
            ("172.16.0.9", Some("private")),
            ("192.168.1.1", Some("private")),
            ("169.254.169.254", Some("metadata")),
            ("169.254.1.1", Some("link-local")),
            ("100.64.0.1", Some("CGNAT")),
            ("224.0.0.1", Some("multicast")),
            ("0.0.0.0", Some("unspecified")),
            ("255.255.255.255", Some("broadcast")),
            ("::1", Some("loopback")),
            ("::", Some("unspecified")),
            ("fe80::1", Some("link-local")),
            ("fd12::1", Some("private (unique local)")),
            ("::ffff:127.0.0.1", Some("IPv4-mapped internal")),
            ("::ffff:10.0.0.1", Some("IPv4-mapped internal")),
            ("fd00:ec2::254", Some("private (unique local)")),
            ("93.184.216.34", None),
            ("2606:4700::1111", None),
        ];
        for (ip, want) in cases {
            assert_eq!(blocked_kind(ip.parse().unwrap()), want, "{ip}");
        }
    }

    #[test]
    fn urls_need_https_unless_allow_listed() {
        let none = GuardPolicy::default();
        assert!(matches!(
            none.check_url("http://example.com/h"),
            Err(GuardError::HttpsRequired(_))
        ));
        assert!(none.check_url("https://example.com/h").is_ok());
        assert!(matches!(
            none.check_url("https://127.0.0.1/h"),
            Err(GuardError::Blocked {
                kind: "loopback",
                ..
            })
        ));
        assert!(matches!(
            none.check_url("not a url"),
            Err(GuardError::InvalidUrl { .. })
        ));
        assert!(matches!(
            none.check_url("ftp://example.com"),
            Err(GuardError::InvalidUrl { .. })
        ));
        assert!(matches!(
            none.check_url("https://u:p@example.com"),
            Err(GuardError::InvalidUrl { .. })
        ));
        assert!(matches!(
            none.check_url("https://example.com/\r\nX: y"),
            Err(GuardError::InvalidUrl { .. })
        ));
        let local = GuardPolicy::parse("127.0.0.1, 10.0.0.0/8, receiver.internal").unwrap();
        assert!(local.check_url("http://127.0.0.1:9000/h").is_ok());
        assert!(local.check_url("http://10.9.9.9/h").is_ok());
        assert!(local.check_url("http://receiver.internal/h").is_ok());
        assert!(local.check_url("http://192.168.0.1/h").is_err());
        assert!(GuardPolicy::parse("bad entry!").is_err());
    }
}
