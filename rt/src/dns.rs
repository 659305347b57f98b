//! The default TXT lookup of [`Runtime::lookup_txt`](crate::Runtime::lookup_txt): one query
//! to the system's first nameserver over UDP, and over TCP when the answer is truncated, with
//! blocking std sockets (it runs on the blocking pool). The messages are
//! `anygrpc_codec::dns`'s.

use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

use anygrpc_codec::dns::{decode_txt_response, encode_txt_query, first_nameserver};

/// How long the default lookup waits for each answer.
const TIMEOUT: Duration = Duration::from_secs(5);

/// `name`'s TXT records, from the system's nameserver.
pub(crate) fn lookup_txt(name: &str) -> io::Result<Vec<String>> {
    query(name, system_nameserver()?, TIMEOUT)
}

/// The system's nameserver, from `/etc/resolv.conf`.
fn system_nameserver() -> io::Result<SocketAddr> {
    let conf = std::fs::read_to_string("/etc/resolv.conf")?;
    first_nameserver(&conf)
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no nameserver in /etc/resolv.conf"))
}

/// Asks `server` for `name`'s TXT records, waiting at most `timeout` for each answer.
pub(crate) fn query(name: &str, server: SocketAddr, timeout: Duration) -> io::Result<Vec<String>> {
    let id = fastrand::u16(..);
    let query = encode_txt_query(id, name)
        .map_err(|s| io::Error::new(io::ErrorKind::InvalidInput, s.message().to_owned()))?;
    let bind: SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let udp = UdpSocket::bind(bind)?;
    udp.set_read_timeout(Some(timeout))?;
    udp.connect(server)?;
    udp.send(&query)?;
    let mut buf = vec![0; 4096];
    let n = udp.recv(&mut buf)?;
    let answer = decode_txt_response(id, &buf[..n])?;
    if !answer.truncated {
        return Ok(answer.records);
    }
    let mut tcp = TcpStream::connect_timeout(&server, timeout)?;
    tcp.set_read_timeout(Some(timeout))?;
    let mut framed = (query.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&query);
    tcp.write_all(&framed)?;
    let mut len = [0; 2];
    tcp.read_exact(&mut len)?;
    let mut message = vec![0; usize::from(u16::from_be_bytes(len))];
    tcp.read_exact(&mut message)?;
    Ok(decode_txt_response(id, &message)?.records)
}

/// This machine's host name, as the kernel has it.
pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|name| name.trim().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The answer to `query` a nameserver gives with `flags`: the question, then one TXT
    /// record of two strings, named by a pointer to the question.
    fn answer(query: &[u8], flags: u16) -> Vec<u8> {
        let mut m = query.to_vec();
        m[2..4].copy_from_slice(&flags.to_be_bytes());
        m[6..8].copy_from_slice(&1u16.to_be_bytes());
        m.extend_from_slice(&[0xc0, 12, 0, 16, 0, 1, 0, 0, 0, 60, 0, 10]);
        m.extend_from_slice(b"\x04grpc\x04_cfg");
        m
    }

    #[test]
    fn lookups_use_udp_then_tcp_when_truncated() {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let server = tcp.local_addr().unwrap();
        let udp = UdpSocket::bind(server).unwrap();
        let dns = std::thread::spawn(move || {
            let mut buf = [0; 512];
            for flags in [0x8180, 0x8380] {
                let (n, peer) = udp.recv_from(&mut buf).unwrap();
                assert_eq!(
                    &buf[12..n],
                    b"\x0c_grpc_config\x07example\x00\x00\x10\x00\x01"
                );
                udp.send_to(&answer(&buf[..n], flags), peer).unwrap();
            }
            let (mut stream, _) = tcp.accept().unwrap();
            let mut len = [0; 2];
            stream.read_exact(&mut len).unwrap();
            let mut query = vec![0; usize::from(u16::from_be_bytes(len))];
            stream.read_exact(&mut query).unwrap();
            let reply = answer(&query, 0x8180);
            stream
                .write_all(&(reply.len() as u16).to_be_bytes())
                .unwrap();
            stream.write_all(&reply).unwrap();
        });
        let timeout = Duration::from_secs(5);
        assert_eq!(
            query("_grpc_config.example", server, timeout).unwrap(),
            ["grpc_cfg"]
        );
        assert_eq!(
            query("_grpc_config.example", server, timeout).unwrap(),
            ["grpc_cfg"]
        );
        dns.join().unwrap();
    }
}
