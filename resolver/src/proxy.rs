//! Which HTTP CONNECT proxy a channel's connections go through (gRFC A1), decided as the
//! C-core's default proxy mapper decides it.
//!
//! The proxy comes from the channel's own option, else from the first of the environment
//! variables `grpc_proxy`, `https_proxy`, `http_proxy` that is set (lower case first, then
//! upper case). It is an `http://` URL, `http://[user[:password]@]host[:port]` (port 443 when
//! none is given, as in the C-core); the user and password become Basic proxy authorization.
//! Hosts listed in `no_grpc_proxy`, else `no_proxy`, are dialled directly: `*` is every
//! host, `.example.com` is that domain and every name under it, `example.com` only that
//! name, and an address or CIDR block (`10.0.0.0/8`, `fd00::/8`) the targets that name an
//! IP address in it.
//!
//! With a proxy, the channel resolves the proxy's name, not the target's: the proxy is asked
//! for a tunnel to the target's `host:port`, and TLS, when on, runs end to end inside it.

use std::{fmt, net::IpAddr};

use anygrpc_codec::Status;
use percent_encoding::percent_decode_str;

use crate::{join_host_port, split_host_port};

/// The proxy port when a proxy URL names none (the C-core's default).
pub const DEFAULT_PROXY_PORT: u16 = 443;

/// An HTTP CONNECT proxy and the hosts that bypass it.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpProxy {
    host: String,
    port: u16,
    credentials: Option<String>,
    no_proxy: Vec<Bypass>,
}

/// One `no_proxy` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Bypass {
    Every,
    /// `.example.com`: the domain and its subdomains.
    Domain(String),
    /// `example.com`: that name only.
    Host(String),
    /// An address, or a CIDR block: `(network, prefix length)`.
    Network(IpAddr, u8),
}

impl HttpProxy {
    /// A proxy from its URL, `http://[user[:password]@]host[:port]` (the `http://` may be
    /// left out). Any other scheme, or a malformed URL, is `INVALID_ARGUMENT`: the tunnel
    /// is opened in plaintext, as in grpc-go and the C-core.
    pub fn new(url: &str) -> Result<HttpProxy, Status> {
        let bad = |why: &str| Status::invalid_argument(format!("proxy URL {url:?}: {why}"));
        let rest = match url.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            Some((scheme, _)) => return Err(bad(&format!("scheme {scheme:?}, not http"))),
            None => url,
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let (credentials, endpoint) = match authority.rsplit_once('@') {
            Some((userinfo, endpoint)) => {
                let decoded = percent_decode_str(userinfo)
                    .decode_utf8()
                    .map_err(|_| bad("user information is not UTF-8"))?;
                (Some(decoded.into_owned()), endpoint)
            }
            None => (None, authority),
        };
        if endpoint.is_empty() {
            return Err(bad("no host"));
        }
        let (host, port) = split_host_port(endpoint, DEFAULT_PROXY_PORT)?;
        Ok(HttpProxy {
            host,
            port,
            credentials,
            no_proxy: Vec::new(),
        })
    }

    /// The proxy the environment names (see the [module](self)), with its `no_proxy` list;
    /// `None` when none is set. `var` reads one environment variable, so tests can pass
    /// their own. A malformed proxy URL is logged and ignored, as the C-core does.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Option<HttpProxy> {
        let first = |names: &[&str]| {
            names.iter().find_map(|name| {
                [name.to_string(), name.to_ascii_uppercase()]
                    .iter()
                    .find_map(|n| var(n).filter(|v| !v.trim().is_empty()))
            })
        };
        let url = first(&["grpc_proxy", "https_proxy", "http_proxy"])?;
        let proxy = match HttpProxy::new(url.trim()) {
            Ok(proxy) => proxy,
            Err(status) => {
                tracing::warn!(%status, "ignoring the HTTP proxy in the environment");
                return None;
            }
        };
        Some(match first(&["no_grpc_proxy", "no_proxy"]) {
            Some(list) => proxy.no_proxy(&list),
            None => proxy,
        })
    }

    /// Hosts that bypass the proxy, comma-separated (see the [module](self)); adds to any
    /// already given. Entries that parse as nothing are ignored.
    pub fn no_proxy(mut self, list: &str) -> Self {
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            self.no_proxy.push(Bypass::parse(entry));
        }
        self
    }

    /// The proxy's `host:port`, to resolve and dial.
    pub fn address(&self) -> String {
        join_host_port(&self.host, self.port)
    }

    /// `user:password` for Basic proxy authorization, if the URL had them.
    pub fn credentials(&self) -> Option<&str> {
        self.credentials.as_deref()
    }

    /// Whether a connection to `host` (a name or an IP address, without port or brackets)
    /// goes through the proxy.
    pub fn applies_to(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let ip = host.parse::<IpAddr>().ok();
        !self.no_proxy.iter().any(|bypass| bypass.matches(&host, ip))
    }
}

impl fmt::Debug for HttpProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpProxy")
            .field("address", &self.address())
            .field("credentials", &self.credentials.as_ref().map(|_| ".."))
            .field("no_proxy", &self.no_proxy)
            .finish()
    }
}

impl Bypass {
    fn parse(entry: &str) -> Bypass {
        if entry == "*" {
            return Bypass::Every;
        }
        let entry = entry.trim_end_matches('.').to_ascii_lowercase();
        if let Some((network, bits)) = entry.split_once('/') {
            if let (Ok(ip), Ok(bits)) = (network.parse::<IpAddr>(), bits.parse::<u8>()) {
                let max = if ip.is_ipv4() { 32 } else { 128 };
                return Bypass::Network(ip, bits.min(max));
            }
        }
        let bare = entry.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            let bits = if ip.is_ipv4() { 32 } else { 128 };
            return Bypass::Network(ip, bits);
        }
        match entry.strip_prefix('.') {
            Some(domain) => Bypass::Domain(domain.to_owned()),
            None => Bypass::Host(entry),
        }
    }

    fn matches(&self, host: &str, ip: Option<IpAddr>) -> bool {
        match self {
            Bypass::Every => true,
            Bypass::Host(name) => host == name,
            Bypass::Domain(domain) => {
                host == domain
                    || host
                        .strip_suffix(domain.as_str())
                        .is_some_and(|sub| sub.ends_with('.'))
            }
            Bypass::Network(network, bits) => ip.is_some_and(|ip| in_network(ip, *network, *bits)),
        }
    }
}

/// Whether `ip` is in `network`/`bits` (never across address families).
fn in_network(ip: IpAddr, network: IpAddr, bits: u8) -> bool {
    let (ip, network, width) = match (ip, network) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            (u128::from(u32::from(ip)), u128::from(u32::from(net)), 32)
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => (u128::from(ip), u128::from(net), 128),
        _ => return false,
    };
    let shift = width - u32::from(bits);
    shift >= width || ip >> shift == network >> shift
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.get(name).cloned()
    }

    #[test]
    fn a_proxy_url_gives_the_address_and_credentials() {
        let proxy = HttpProxy::new("http://us%40er:p%3Ass@proxy.corp:3128/").unwrap();
        assert_eq!(proxy.address(), "proxy.corp:3128");
        assert_eq!(proxy.credentials(), Some("us@er:p:ss"));
        let bare = HttpProxy::new("proxy.corp").unwrap();
        assert_eq!(bare.address(), "proxy.corp:443");
        assert_eq!(bare.credentials(), None);
        assert_eq!(
            HttpProxy::new("[::1]:8080").unwrap().address(),
            "[::1]:8080"
        );
        for bad in [
            "https://proxy:443",
            "socks5://proxy:1080",
            "http://",
            "http://user@",
        ] {
            assert!(HttpProxy::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_environment_is_read_in_the_c_cores_order() {
        assert_eq!(HttpProxy::from_env(env(&[])), None);
        let proxy = |vars: &[(&str, &str)]| HttpProxy::from_env(env(vars)).map(|p| p.address());
        assert_eq!(
            proxy(&[
                ("http_proxy", "h:1"),
                ("https_proxy", "s:2"),
                ("grpc_proxy", "g:3")
            ]),
            Some("g:3".into())
        );
        assert_eq!(
            proxy(&[("http_proxy", "h:1"), ("HTTPS_PROXY", "s:2")]),
            Some("s:2".into())
        );
        assert_eq!(
            proxy(&[("grpc_proxy", " "), ("http_proxy", "h:1")]),
            Some("h:1".into())
        );
        assert_eq!(
            proxy(&[("grpc_proxy", "https://secure:443")]),
            None,
            "logged, ignored"
        );
        let bypassing = HttpProxy::from_env(env(&[
            ("grpc_proxy", "g:3"),
            ("no_proxy", "skipped.example"),
            ("NO_GRPC_PROXY", "direct.example"),
        ]))
        .unwrap();
        assert!(!bypassing.applies_to("direct.example"));
        assert!(
            bypassing.applies_to("skipped.example"),
            "no_grpc_proxy wins"
        );
    }

    #[test]
    fn no_proxy_matches_names_domains_and_networks() {
        let proxy = HttpProxy::new("p:1")
            .unwrap()
            .no_proxy(".google.com, example.com,10.10.0.0/24 , ::1, 192.168.1.7");
        for direct in [
            "google.com",
            "foo.google.com",
            "bar.baz.google.com",
            "EXAMPLE.com",
            "example.com.",
            "10.10.0.255",
            "::1",
            "192.168.1.7",
        ] {
            assert!(!proxy.applies_to(direct), "{direct} bypasses");
        }
        for proxied in [
            "bar.example.com",
            "notgoogle.com",
            "baz.googleapis.com",
            "10.10.1.0",
            "192.168.1.8",
            "::2",
        ] {
            assert!(proxy.applies_to(proxied), "{proxied} is proxied");
        }
        let every = HttpProxy::new("p:1").unwrap().no_proxy("*");
        assert!(!every.applies_to("anything"));
        let zero = HttpProxy::new("p:1").unwrap().no_proxy("0.0.0.0/0");
        assert!(!zero.applies_to("8.8.8.8") && zero.applies_to("::1"));
    }
}
