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
