//! Target URIs (`doc/naming.md`): `scheme:[//authority/]endpoint`.

use std::fmt;

/// A parsed target: scheme, optional authority, and the scheme-specific endpoint.
#[derive(Clone, PartialEq, Eq)]
pub struct Target {
    scheme: String,
    authority: String,
    endpoint: String,
}

impl Target {
    /// Parses `scheme:endpoint`, `scheme:///endpoint` or `scheme://authority/endpoint`.
    ///
    /// Returns `None` when the text has no valid scheme; the caller then applies the default
    /// scheme to the whole text. The endpoint is percent-decoded. For `unix`, an absolute path
    /// given as `unix:///abs` keeps its leading `/`.
    pub fn parse(text: &str) -> Option<Target> {
        let (scheme, rest) = text.split_once(':')?;
        let valid_scheme = scheme
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        if !valid_scheme {
            return None;
        }
        let scheme = scheme.to_ascii_lowercase();
        let (authority, endpoint) = match rest.strip_prefix("//") {
            Some(after) => match after.split_once('/') {
                Some((authority, path)) => {
                    let path = if scheme == "unix" {
                        format!("/{path}")
                    } else {
                        path.to_owned()
                    };
                    (authority.to_owned(), path)
                }
                None => (after.to_owned(), String::new()),
            },
            None => (String::new(), rest.to_owned()),
        };
        let endpoint = percent_encoding::percent_decode_str(&endpoint)
            .decode_utf8()
            .ok()?
            .into_owned();
        Some(Target {
            scheme,
            authority,
            endpoint,
        })
    }

    /// The URI scheme, lower-case.
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// The authority between `//` and the next `/` (empty when absent), e.g. a DNS server.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// The scheme-specific part: `host:port` for dns, a path for unix, a list for ipv4/ipv6.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}/{}", self.scheme, self.authority, self.endpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_forms() {
        let t = Target::parse("dns://8.8.8.8/example.com:443").unwrap();
        assert_eq!(
            (t.scheme(), t.authority(), t.endpoint()),
            ("dns", "8.8.8.8", "example.com:443")
        );
        let t = Target::parse("dns:///example.com").unwrap();
        assert_eq!((t.authority(), t.endpoint()), ("", "example.com"));
        let t = Target::parse("dns:example.com:80").unwrap();
        assert_eq!(t.endpoint(), "example.com:80");
        let t = Target::parse("unix:///var/run/x.sock").unwrap();
        assert_eq!(t.endpoint(), "/var/run/x.sock");
        let t = Target::parse("unix:%2Ftmp%2Fa%20b").unwrap();
        assert_eq!(t.endpoint(), "/tmp/a b");
        assert!(Target::parse("no-scheme-here").is_none());
        assert!(Target::parse("1abc:foo").is_none());
    }
}
