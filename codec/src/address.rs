//! Where a connection goes to or comes from: the value resolvers produce, balancers choose
//! among and runtimes connect to.

use std::{fmt, net::SocketAddr, path::PathBuf};

/// Where a connection goes to or comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    /// A TCP socket address.
    Tcp(SocketAddr),
    /// A Unix-domain socket path (empty for an unnamed peer).
    Unix(PathBuf),
    /// A name in Linux's abstract Unix-socket namespace (`unix-abstract:` targets).
    UnixAbstract(Vec<u8>),
}

impl From<SocketAddr> for Address {
    fn from(addr: SocketAddr) -> Address {
        Address::Tcp(addr)
    }
}

impl Address {
    /// A Unix-domain socket path.
    pub fn unix(path: impl Into<PathBuf>) -> Address {
        Address::Unix(path.into())
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp(addr) => write!(f, "{addr}"),
            Address::Unix(path) => write!(f, "unix:{}", path.display()),
            Address::UnixAbstract(name) => {
                write!(f, "unix-abstract:{}", String::from_utf8_lossy(name))
            }
        }
    }
}

/// A backend as a resolver found it: the addresses of one server, in the order to try them
/// (gRFC A61: its IPv6 and IPv4 addresses), with what the resolver knows about it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Endpoint {
    /// Its addresses; not empty.
    pub addresses: Vec<Address>,
    /// Where it sits in a tree of policies, outermost first: a `priority` or
    /// `weighted_target` policy hands it to the child named `path[0]`, which sees the rest
    /// (gRPC's hierarchical address paths, which xDS fills with priorities and localities).
    pub path: Vec<String>,
    /// Its weight among its siblings, when the resolver gave one (`ring_hash` gives it that
    /// many times the share of the ring).
    pub weight: Option<u32>,
    /// Where `ring_hash` places it on the ring instead of by its first address (gRFC A76).
    pub hash_key: Option<String>,
}

impl Endpoint {
    /// An endpoint of these addresses (at least one), with no other attributes.
    pub fn new(addresses: Vec<Address>) -> Endpoint {
        Endpoint {
            addresses,
            path: Vec::new(),
            weight: None,
            hash_key: None,
        }
    }

    /// The same endpoint under `path` in a tree of policies.
    pub fn with_path<S: Into<String>>(self, path: impl IntoIterator<Item = S>) -> Endpoint {
        Endpoint {
            path: path.into_iter().map(Into::into).collect(),
            ..self
        }
    }

    /// The same endpoint with a weight.
    pub fn with_weight(self, weight: u32) -> Endpoint {
        Endpoint {
            weight: Some(weight),
            ..self
        }
    }

    /// The same endpoint with `ring_hash`'s placement key.
    pub fn with_hash_key(self, key: impl Into<String>) -> Endpoint {
        Endpoint {
            hash_key: Some(key.into()),
            ..self
        }
    }
}

impl From<Address> for Endpoint {
    fn from(address: Address) -> Endpoint {
        Endpoint::new(vec![address])
    }
}

impl From<SocketAddr> for Endpoint {
    fn from(addr: SocketAddr) -> Endpoint {
        Endpoint::from(Address::Tcp(addr))
    }
}
