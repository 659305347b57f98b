//! The DNS messages of one lookup: a query for a name's TXT records (gRFC A2's
//! `_grpc_config.<host>`) or its addresses (A and AAAA, for a `dns://AUTHORITY/` target that
//! names its own DNS server), the answer, and the nameserver a `resolv.conf` names.
//! Sans-IO: the runtime sends them.
//!
//! The system resolver (`getaddrinfo`) can neither ask for TXT records nor ask a chosen
//! server, and a DNS client crate would bring dozens of dependencies for these queries; the
//! codec here is small, bounds-checked, and takes no input it has not validated.

use std::{
    io,
    net::{IpAddr, SocketAddr},
};

use crate::Status;

/// The Internet class.
const CLASS_IN: u16 = 1;

/// The record types asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordType {
    /// An IPv4 address.
    A,
    /// An IPv6 address.
    Aaaa,
    /// Text: a service config in DNS.
    Txt,
}

impl RecordType {
    fn code(self) -> u16 {
        match self {
            RecordType::A => 1,
            RecordType::Aaaa => 28,
            RecordType::Txt => 16,
        }
    }
}

/// One record of an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// An A or AAAA record.
    Address(IpAddr),
    /// A TXT record's strings, concatenated.
    Txt(String),
}

/// Encodes a recursive query for `name`'s records of type `kind`.
pub fn encode_query(id: u16, name: &str, kind: RecordType) -> Result<Vec<u8>, Status> {
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
    out.extend_from_slice(&kind.code().to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    Ok(out)
}

/// A parsed response.
#[derive(Debug, PartialEq, Eq)]
pub struct Answer {
    /// The server truncated the answer (retry over TCP).
    pub truncated: bool,
    /// The records of the type asked for, in the order given.
    pub records: Vec<Record>,
}

/// Parses a response to the query with `id` for records of type `kind`. Name errors
/// (NXDOMAIN) are an empty answer; records of other types (the CNAME the name led
/// through) are skipped; anything malformed or mismatched is an error.
pub fn decode_response(id: u16, message: &[u8], kind: RecordType) -> io::Result<Answer> {
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
            return Ok(Answer {
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
        let (code, class) = (r.u16()?, r.u16()?);
        r.skip(4)?; // TTL
        let len = usize::from(r.u16()?);
        let data = r.take(len)?;
        if code != kind.code() || class != CLASS_IN {
            continue;
        }
        records.push(match kind {
            RecordType::A => {
                let octets: [u8; 4] = data.try_into().map_err(|_| bad("A data is not 4 bytes"))?;
                Record::Address(IpAddr::from(octets))
            }
            RecordType::Aaaa => {
                let octets: [u8; 16] = data
                    .try_into()
                    .map_err(|_| bad("AAAA data is not 16 bytes"))?;
                Record::Address(IpAddr::from(octets))
            }
            RecordType::Txt => {
                let mut text = Vec::with_capacity(len);
                let mut strings = Reader { buf: data, at: 0 };
                while strings.at < data.len() {
                    let n = usize::from(strings.take(1)?[0]);
                    text.extend_from_slice(strings.take(n)?);
                }
                Record::Txt(String::from_utf8(text).map_err(|_| bad("TXT data is not UTF-8"))?)
            }
        });
    }
    Ok(Answer { truncated, records })
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A response for query `id` with one CNAME and one two-string TXT answer, names
    /// compressed.
    pub(crate) fn response(id: u16, flags: u16) -> Vec<u8> {
        let mut m = id.to_be_bytes().to_vec();
        m.extend_from_slice(&flags.to_be_bytes());
        m.extend_from_slice(&[0, 1, 0, 2, 0, 0, 0, 0]);
        m.extend_from_slice(b"\x0c_grpc_config\x07example\x00\x00\x10\x00\x01");
        m.extend_from_slice(&[0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, 2, 0xc0, 12]);
        m.extend_from_slice(&[0xc0, 12, 0, 16, 0, 1, 0, 0, 0, 60, 0, 10]);
        m.extend_from_slice(b"\x04grpc\x04_cfg");
        m
    }

    fn encode_txt_query(id: u16, name: &str) -> Result<Vec<u8>, Status> {
        encode_query(id, name, RecordType::Txt)
    }

    fn decode_txt_response(id: u16, message: &[u8]) -> io::Result<Answer> {
        decode_response(id, message, RecordType::Txt)
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
            Answer {
                truncated: false,
                records: vec![Record::Txt("grpc_cfg".to_owned())]
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
    fn address_queries_and_answers() {
        let query = encode_query(9, "svc.example", RecordType::Aaaa).unwrap();
        assert_eq!(&query[12..], b"\x03svc\x07example\x00\x00\x1c\x00\x01");
        let mut m = 9u16.to_be_bytes().to_vec();
        m.extend_from_slice(&[0x81, 0x80, 0, 1, 0, 3, 0, 0, 0, 0]);
        m.extend_from_slice(b"\x03svc\x07example\x00\x00\x01\x00\x01");
        // A CNAME, then two A records.
        m.extend_from_slice(&[0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, 2, 0xc0, 12]);
        m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 0, 0, 1]);
        m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 0, 0, 2]);
        let answer = decode_response(9, &m, RecordType::A).unwrap();
        let expected: Vec<Record> = ["10.0.0.1", "10.0.0.2"]
            .iter()
            .map(|ip| Record::Address(ip.parse().unwrap()))
            .collect();
        assert_eq!(answer.records, expected);
        assert!(decode_response(9, &m, RecordType::Aaaa)
            .unwrap()
            .records
            .is_empty());
        // An A record whose data is not 4 bytes.
        let mut short = m.clone();
        let at = short.len() - 5;
        short[at] = 3;
        short.pop();
        let err = decode_response(9, &short, RecordType::A).unwrap_err();
        assert!(err.to_string().contains("not 4 bytes"), "{err}");
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
