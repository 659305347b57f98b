//! The default DNS queries of [`Runtime::lookup_txt`](crate::Runtime::lookup_txt) (to the
//! system's first nameserver) and [`Runtime::lookup_host_at`](crate::Runtime::lookup_host_at)
//! (to a chosen one): each over UDP, and over TCP when the answer is truncated, with blocking
//! std sockets (they run on the blocking pool). The messages are `anygrpc_codec::dns`'s.

use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

use anygrpc_codec::dns::{decode_response, encode_query, first_nameserver, Record, RecordType};

/// How long the default lookup waits for each answer.
const TIMEOUT: Duration = Duration::from_secs(5);

/// `name`'s TXT records, from the system's nameserver.
pub(crate) fn lookup_txt(name: &str) -> io::Result<Vec<String>> {
    let records = query(name, system_nameserver()?, TIMEOUT, RecordType::Txt)?;
    Ok(records
        .into_iter()
        .filter_map(|record| match record {
            Record::Txt(text) => Some(text),
            Record::Address(_) => None,
        })
        .collect())
}

/// `host`'s addresses (A, then AAAA) from the DNS server at `server`, with `port`. One of
/// the two queries failing is not an error while the other answers.
pub(crate) fn lookup_host_at(
    server: SocketAddr,
    host: &str,
    port: u16,
) -> io::Result<Vec<SocketAddr>> {
    let mut addresses = Vec::new();
    let mut failure = None;
    for kind in [RecordType::A, RecordType::Aaaa] {
        match query(host, server, TIMEOUT, kind) {
            Ok(records) => {
                addresses.extend(records.into_iter().filter_map(|record| match record {
                    Record::Address(ip) => Some(SocketAddr::new(ip, port)),
                    Record::Txt(_) => None,
                }))
            }
            Err(e) => failure = Some(e),
        }
    }
    match failure {
        Some(e) if addresses.is_empty() => Err(e),
        _ => Ok(addresses),
    }
}

/// The system's nameserver, from `/etc/resolv.conf`.
fn system_nameserver() -> io::Result<SocketAddr> {
    let conf = std::fs::read_to_string("/etc/resolv.conf")?;
    first_nameserver(&conf)
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no nameserver in /etc/resolv.conf"))
}

/// Asks `server` for `name`'s records of type `kind`, waiting at most `timeout` for each
/// answer.
pub(crate) fn query(
    name: &str,
    server: SocketAddr,
    timeout: Duration,
    kind: RecordType,
) -> io::Result<Vec<Record>> {
    let id = fastrand::u16(..);
    let query = encode_query(id, name, kind)
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
    let answer = decode_response(id, &buf[..n], kind)?;
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
    Ok(decode_response(id, &message, kind)?.records)
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
        let txt = [Record::Txt("grpc_cfg".into())];
        for _ in 0..2 {
            let records = query("_grpc_config.example", server, timeout, RecordType::Txt);
            assert_eq!(records.unwrap(), txt);
        }
        dns.join().unwrap();
    }
}
