//! Service config in DNS (gRFC A2): the `_grpc_config.<host>` TXT record, its
//! `grpc_config=` attribute, and the choice a client selects from it.
//!
//! The lookup itself is a single TXT query sent to the system's first nameserver
//! (`/etc/resolv.conf`) over UDP, and over TCP when the answer is truncated. The system resolver
//! (`getaddrinfo`) cannot ask for TXT records, and a DNS client crate would bring dozens of
//! dependencies for this one query; the codec here is small, bounds-checked, and takes no
//! input it has not validated.

use std::{
    io::{self, Read, Write},
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

use anygrpc_codec::Status;

/// The language this client reports for `clientLanguage` matching.
pub const CLIENT_LANGUAGE: &str = "rust";

/// The attribute that carries the service config choices (RFC 1464 style).
const ATTRIBUTE: &str = "grpc_config=";

/// Picks the service config for this client from a host's TXT records.
///
/// `records` are the TXT records of `_grpc_config.<host>`, each with its strings already
/// concatenated; `hostname` is this machine's name; `draw` is a number in 0..100 drawn once
/// per client for `percentage`. Returns the chosen `serviceConfig` as JSON text, `None` when no
/// record has the attribute or no choice matches, and `INVALID_ARGUMENT` when the choices are
/// malformed (the whole config is then discarded, as A2 and A21 say).
pub fn select_service_config(
    records: &[String],
    hostname: &str,
    draw: u32,
) -> Result<Option<String>, Status> {
    let Some(json) = records.iter().find_map(|r| r.strip_prefix(ATTRIBUTE)) else {
        return Ok(None);
    };
    let bad =
        |why: &str| Status::invalid_argument(format!("invalid grpc_config TXT record: {why}"));
    let choices: serde_json::Value = serde_json::from_str(json).map_err(|e| bad(&e.to_string()))?;
    let choices = choices.as_array().ok_or_else(|| bad("not a list"))?;
    for choice in choices {
        let choice = choice
            .as_object()
            .ok_or_else(|| bad("a choice is not an object"))?;
        let mut matches = true;
        let mut config = None;
        for (key, value) in choice {
            match key.as_str() {
                "clientLanguage" => {
                    let languages = strings(value).ok_or_else(|| bad("clientLanguage"))?;
                    matches &= languages.is_empty()
                        || languages
                            .iter()
                            .any(|l| l.eq_ignore_ascii_case(CLIENT_LANGUAGE));
                }
                "clientHostname" => {
                    let names = strings(value).ok_or_else(|| bad("clientHostname"))?;
                    matches &= names.is_empty() || names.contains(&hostname);
                }
                "percentage" => {
                    let percentage = value
                        .as_u64()
                        .filter(|p| *p <= 100)
                        .ok_or_else(|| bad("percentage must be an integer in 0..=100"))?;
                    matches &= u64::from(draw) < percentage;
                }
                "serviceConfig" => {
                    if !value.is_object() {
                        return Err(bad("serviceConfig must be an object"));
                    }
                    config = Some(value.to_string());
                }
                other => return Err(bad(&format!("unknown field {other:?}"))),
            }
        }
        let config = config.ok_or_else(|| bad("a choice has no serviceConfig"))?;
        if matches {
            return Ok(Some(config));
        }
    }
    Ok(None)
}

fn strings(value: &serde_json::Value) -> Option<Vec<&str>> {
    value
        .as_array()?
        .iter()
        .map(serde_json::Value::as_str)
        .collect()
}

/// The TXT record type and the Internet class.
const TYPE_TXT: u16 = 16;
const CLASS_IN: u16 = 1;

/// Encodes a recursive query for `name`'s TXT records.
pub fn encode_txt_query(id: u16, name: &str) -> Result<Vec<u8>, Status> {
    let mut out = Vec::with_capacity(18 + name.len());
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&[0x01, 0x00]); // standard query, recursion desired
    out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // one question
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(Status::invalid_argument(format!(
                "invalid DNS name {name:?}"
            )));
        }
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    if out.len() > 12 + 255 {
        return Err(Status::invalid_argument(format!(
            "DNS name too long: {name:?}"
        )));
    }
    out.extend_from_slice(&TYPE_TXT.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    Ok(out)
}

/// A parsed TXT response.
#[derive(Debug, PartialEq, Eq)]
pub struct TxtAnswer {
    /// The server truncated the answer (retry over TCP).
    pub truncated: bool,
    /// Each TXT record's strings, concatenated.
    pub records: Vec<String>,
}

/// Parses a response to the query with `id`. Name errors (NXDOMAIN) are an empty answer;
/// anything malformed or mismatched is an error.
pub fn decode_txt_response(id: u16, message: &[u8]) -> io::Result<TxtAnswer> {
    let bad = |why: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad DNS response: {why}"),
        )
    };
    let mut r = Reader {
        buf: message,
        at: 0,
    };
    if r.u16()? != id {
        return Err(bad("id mismatch"));
    }
    let flags = r.u16()?;
    if flags & 0x8000 == 0 {
        return Err(bad("not a response"));
    }
    let truncated = flags & 0x0200 != 0;
    match flags & 0x000f {
        0 => {}
        3 => {
            return Ok(TxtAnswer {
                truncated,
                records: Vec::new(),
            })
        }
        code => return Err(bad(&format!("server answered rcode {code}"))),
    }
    let questions = r.u16()?;
    let answers = r.u16()?;
    r.skip(4)?; // authority and additional counts
    for _ in 0..questions {
        r.skip_name()?;
        r.skip(4)?;
    }
    let mut records = Vec::new();
    for _ in 0..answers {
        r.skip_name()?;
        let (kind, class) = (r.u16()?, r.u16()?);
        r.skip(4)?; // TTL
        let len = usize::from(r.u16()?);
        let data = r.take(len)?;
        if kind != TYPE_TXT || class != CLASS_IN {
            continue; // e.g. the CNAME the name led through
        }
        let mut text = Vec::with_capacity(len);
        let mut strings = Reader { buf: data, at: 0 };
        while strings.at < data.len() {
            let n = usize::from(strings.take(1)?[0]);
            text.extend_from_slice(strings.take(n)?);
        }
        records.push(String::from_utf8(text).map_err(|_| bad("TXT data is not UTF-8"))?);
    }
    Ok(TxtAnswer { truncated, records })
}

/// A bounds-checked cursor over a DNS message.
struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> io::Result<&'a [u8]> {
        let end = self.at.checked_add(n).filter(|end| *end <= self.buf.len());
        let end =
            end.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "truncated DNS message"))?;
        let out = &self.buf[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn skip(&mut self, n: usize) -> io::Result<()> {
        self.take(n).map(drop)
    }

    fn u16(&mut self) -> io::Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// Skips a name: labels up to a zero byte, or a compression pointer (which ends it).
    fn skip_name(&mut self) -> io::Result<()> {
        loop {
            let len = self.take(1)?[0];
            match len {
                0 => return Ok(()),
                l if l & 0xc0 == 0xc0 => return self.skip(1),
                l if l & 0xc0 == 0 => self.skip(usize::from(l))?,
                _ => return Err(io::Error::new(io::ErrorKind::InvalidData, "bad DNS label")),
            }
        }
    }
}

/// The first `nameserver` in resolv.conf text.
pub fn first_nameserver(resolv_conf: &str) -> Option<SocketAddr> {
    resolv_conf.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next()? == "nameserver")
            .then(|| words.next()?.parse::<IpAddr>().ok())
            .flatten()
            .map(|ip| SocketAddr::new(ip, 53))
    })
}

/// The system's nameserver, from `/etc/resolv.conf`.
pub(crate) fn system_nameserver() -> io::Result<SocketAddr> {
    let conf = std::fs::read_to_string("/etc/resolv.conf")?;
    first_nameserver(&conf)
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no nameserver in /etc/resolv.conf"))
}

/// Asks `server` for `name`'s TXT records: blocking, so it runs on its own thread.
pub(crate) fn lookup_txt(
    name: &str,
    server: SocketAddr,
    timeout: Duration,
) -> io::Result<Vec<String>> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use anygrpc_codec::Code;

    fn records(json: &str) -> Vec<String> {
        vec!["v=spf1 -all".to_owned(), format!("grpc_config={json}")]
    }

    #[test]
    fn the_first_matching_choice_wins() {
        let txt = records(
            r#"[
            {"clientLanguage": ["go", "java"], "serviceConfig": {"x": 1}},
            {"clientHostname": ["other"], "serviceConfig": {"x": 2}},
            {"percentage": 30, "serviceConfig": {"x": 3}},
            {"clientLanguage": ["RUST"], "clientHostname": ["me"], "serviceConfig": {"x": 4}},
            {"serviceConfig": {"x": 5}}
        ]"#,
        );
        assert_eq!(
            select_service_config(&txt, "me", 29).unwrap().unwrap(),
            r#"{"x":3}"#
        );
        assert_eq!(
            select_service_config(&txt, "me", 30).unwrap().unwrap(),
            r#"{"x":4}"#
        );
        assert_eq!(
            select_service_config(&txt, "you", 99).unwrap().unwrap(),
            r#"{"x":5}"#
        );
        assert_eq!(
            select_service_config(&["a=b".to_owned()], "me", 0).unwrap(),
            None
        );
        let none = records(r#"[{"percentage": 0, "serviceConfig": {}}]"#);
        assert_eq!(select_service_config(&none, "me", 0).unwrap(), None);
    }

    #[test]
    fn malformed_choices_discard_the_config() {
        for bad in [
            "not json",
            r#"{"serviceConfig": {}}"#,
            r#"[{"serviceConfig": {}, "extra": 1}]"#,
            r#"[{"percentage": 101, "serviceConfig": {}}]"#,
            r#"[{"percentage": 5.5, "serviceConfig": {}}]"#,
            r#"[{"clientLanguage": "rust", "serviceConfig": {}}]"#,
            r#"[{"serviceConfig": "x"}]"#,
            r#"[{"percentage": 100}]"#,
        ] {
            let err = select_service_config(&records(bad), "me", 0).unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{bad}");
        }
    }

    /// A response for query `id` with one CNAME and one two-string TXT answer, names
    /// compressed.
    fn response(id: u16, flags: u16) -> Vec<u8> {
        let mut m = id.to_be_bytes().to_vec();
        m.extend_from_slice(&flags.to_be_bytes());
        m.extend_from_slice(&[0, 1, 0, 2, 0, 0, 0, 0]);
        m.extend_from_slice(b"\x0c_grpc_config\x07example\x00\x00\x10\x00\x01");
        m.extend_from_slice(&[0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, 2, 0xc0, 12]);
        m.extend_from_slice(&[0xc0, 12, 0, 16, 0, 1, 0, 0, 0, 60, 0, 10]);
        m.extend_from_slice(b"\x04grpc\x04_cfg");
        m
    }

    #[test]
    fn txt_messages_round_trip_and_bad_ones_fail_cleanly() {
        let query = encode_txt_query(7, "_grpc_config.example").unwrap();
        assert_eq!(
            &query[12..],
            b"\x0c_grpc_config\x07example\x00\x00\x10\x00\x01"
        );
        assert!(encode_txt_query(7, "a..b").is_err());
        assert!(encode_txt_query(7, &"x".repeat(64)).is_err());

        let answer = decode_txt_response(7, &response(7, 0x8180)).unwrap();
        assert_eq!(
            answer,
            TxtAnswer {
                truncated: false,
                records: vec!["grpc_cfg".to_owned()]
            }
        );
        assert!(
            decode_txt_response(7, &response(7, 0x8380))
                .unwrap()
                .truncated
        );
        assert!(decode_txt_response(7, &response(7, 0x8183))
            .unwrap()
            .records
            .is_empty());
        assert!(
            decode_txt_response(8, &response(7, 0x8180)).is_err(),
            "wrong id"
        );
        assert!(
            decode_txt_response(7, &response(7, 0x8182)).is_err(),
            "SERVFAIL"
        );
        let full = response(7, 0x8180);
        for cut in 0..full.len() {
            assert!(
                decode_txt_response(7, &full[..cut]).is_err(),
                "cut at {cut}"
            );
        }
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
                let id = u16::from_be_bytes([buf[0], buf[1]]);
                assert_eq!(
                    &buf[12..n],
                    b"\x0c_grpc_config\x07example\x00\x00\x10\x00\x01"
                );
                udp.send_to(&response(id, flags), peer).unwrap();
            }
            let (mut stream, _) = tcp.accept().unwrap();
            let mut len = [0; 2];
            stream.read_exact(&mut len).unwrap();
            let mut query = vec![0; usize::from(u16::from_be_bytes(len))];
            stream.read_exact(&mut query).unwrap();
            let reply = response(u16::from_be_bytes([query[0], query[1]]), 0x8180);
            stream
                .write_all(&(reply.len() as u16).to_be_bytes())
                .unwrap();
            stream.write_all(&reply).unwrap();
        });
        let timeout = Duration::from_secs(5);
        assert_eq!(
            lookup_txt("_grpc_config.example", server, timeout).unwrap(),
            ["grpc_cfg"]
        );
        assert_eq!(
            lookup_txt("_grpc_config.example", server, timeout).unwrap(),
            ["grpc_cfg"]
        );
        dns.join().unwrap();
    }

    #[test]
    fn nameserver_from_resolv_conf() {
        let conf = "# comment\nsearch example\nnameserver 10.0.0.53\nnameserver 1.1.1.1\n";
        assert_eq!(
            first_nameserver(conf),
            Some("10.0.0.53:53".parse().unwrap())
        );
        assert_eq!(
            first_nameserver("nameserver ::1"),
            Some("[::1]:53".parse().unwrap())
        );
        assert_eq!(first_nameserver("options ndots:5"), None);
    }
}
