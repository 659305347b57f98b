//! Service config in DNS (gRFC A2): the `_grpc_config.<host>` TXT record, its
//! `grpc_config=` attribute, and the choice a client selects from it.
//!
//! The lookup itself goes through the runtime ([`Runtime::lookup_txt`]): the default runtimes
//! send one query to the system's nameserver, encoded and decoded by `anygrpc_codec::dns`;
//! the simulation answers from its own records.
//!
//! [`Runtime::lookup_txt`]: anygrpc_rt::Runtime::lookup_txt

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
}
