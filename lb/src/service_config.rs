//! The service config (`doc/service_config.md`, grpc's `service_config.proto`): per-method call
//! settings with gRFC A6's retry and hedging policies, retry throttling, the load-balancing
//! config and the client health-check service.
//!
//! A config is parsed and checked once, when a channel is built or a resolver delivers it, and
//! shared by every call after that; an invalid one is `INVALID_ARGUMENT` naming the bad field.

use std::{collections::HashMap, sync::Arc, time::Duration};

use anygrpc_codec::{Code, Status};
use serde_json::{Map, Value};

use crate::policy::parse_json_duration;

/// A parsed service config.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceConfig {
    /// `loadBalancingConfig`, or the deprecated `loadBalancingPolicy` as a one-entry list; the
    /// channel checks it against its policy registry.
    pub load_balancing_config: Option<Value>,
    /// `healthCheckConfig.serviceName` (gRFC A17).
    pub health_check_service_name: Option<String>,
    /// `retryThrottling`.
    pub retry_throttling: Option<ThrottleConfig>,
    /// Method configs by name: `service/method`, `service/` (every method of a service) and
    /// `""` (the default).
    methods: HashMap<String, Arc<MethodConfig>>,
}

/// The settings of one `methodConfig` entry.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MethodConfig {
    /// `waitForReady`: calls wait for a connection instead of failing fast (unless the call
    /// says otherwise).
    pub wait_for_ready: Option<bool>,
    /// `timeout`: the call's deadline is at most this far away.
    pub timeout: Option<Duration>,
    /// `maxRequestMessageBytes`: the smaller of this and the channel's limit applies.
    pub max_request_message_bytes: Option<usize>,
    /// `maxResponseMessageBytes`: the smaller of this and the channel's limit applies.
    pub max_response_message_bytes: Option<usize>,
    /// `retryPolicy` or `hedgingPolicy` (a config may hold at most one).
    pub attempts: Option<AttemptPolicy>,
}

/// How a call makes more than one attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum AttemptPolicy {
    /// Retry after a failure, with backoff.
    Retry(RetryPolicy),
    /// Send attempts in parallel, `hedging_delay` apart.
    Hedging(HedgingPolicy),
}

/// `retryPolicy` (gRFC A6).
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (> 1; the channel caps it, 5 by default).
    pub max_attempts: u32,
    /// The first retry's backoff before jitter.
    pub initial_backoff: Duration,
    /// The largest backoff before jitter.
    pub max_backoff: Duration,
    /// Each retry's backoff is the previous one times this.
    pub backoff_multiplier: f64,
    /// The status codes that are retried.
    pub retryable_status_codes: CodeSet,
}

/// `hedgingPolicy` (gRFC A6).
#[derive(Debug, Clone, PartialEq)]
pub struct HedgingPolicy {
    /// Attempts in all, the first included (> 1; the channel caps it, 5 by default).
    pub max_attempts: u32,
    /// How long after one attempt the next starts (zero: all at once).
    pub hedging_delay: Duration,
    /// Status codes after which the other attempts go on; any other code ends the call.
    pub non_fatal_status_codes: CodeSet,
}

/// `retryThrottling`: tokens in thousandths, as A6 keeps three decimals of `tokenRatio`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// `maxTokens` × 1000.
    pub max_tokens_milli: u32,
    /// `tokenRatio` × 1000.
    pub token_ratio_milli: u32,
}

/// A set of status codes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CodeSet(u32);

impl CodeSet {
    /// Whether `code` is in the set.
    pub fn contains(self, code: Code) -> bool {
        self.0 & (1 << (code as u32)) != 0
    }

    /// The set with `code` added.
    pub fn with(self, code: Code) -> CodeSet {
        CodeSet(self.0 | 1 << (code as u32))
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl ServiceConfig {
    /// Parses and checks a service config in JSON.
    pub fn parse(json: &str) -> Result<ServiceConfig, Status> {
        let value: Value = serde_json::from_str(json)
            .map_err(|e| invalid(format!("service config is not JSON: {e}")))?;
        let root = value
            .as_object()
            .ok_or_else(|| invalid("service config must be a JSON object"))?;
        let mut config = ServiceConfig {
            load_balancing_config: match (
                root.get("loadBalancingConfig"),
                root.get("loadBalancingPolicy"),
            ) {
                (Some(list), _) => Some(list.clone()),
                (None, Some(Value::String(name))) => {
                    Some(serde_json::json!([{ name.to_ascii_lowercase(): {} }]))
                }
                (None, Some(_)) => return Err(invalid("loadBalancingPolicy must be a string")),
                (None, None) => None,
            },
            ..ServiceConfig::default()
        };
        if let Some(health) = root.get("healthCheckConfig") {
            config.health_check_service_name = match object(health, "healthCheckConfig")?
                .get("serviceName")
            {
                None => None,
                Some(Value::String(name)) => Some(name.clone()),
                Some(_) => return Err(invalid("healthCheckConfig.serviceName must be a string")),
            };
        }
        if let Some(throttling) = root.get("retryThrottling") {
            config.retry_throttling = Some(parse_throttling(throttling)?);
        }
        let method_configs = match root.get("methodConfig") {
            None => &Vec::new(),
            Some(Value::Array(list)) => list,
            Some(_) => return Err(invalid("methodConfig must be a list")),
        };
        for entry in method_configs {
            let entry = object(entry, "methodConfig entry")?;
            let method = Arc::new(parse_method_config(entry)?);
            let names = match entry.get("name") {
                Some(Value::Array(names)) if !names.is_empty() => names,
                _ => return Err(invalid("methodConfig entry needs a non-empty name list")),
            };
            for name in names {
                let key = method_key(object(name, "methodConfig name")?)?;
                if config.methods.insert(key.clone(), method.clone()).is_some() {
                    return Err(invalid(format!("methodConfig name {key:?} appears twice")));
                }
            }
        }
        Ok(config)
    }

    /// The config of a call to `path` (`/package.Service/Method`): the entry naming the
    /// method, else the one naming its service, else the default.
    pub fn method(&self, path: &str) -> Option<&Arc<MethodConfig>> {
        if self.methods.is_empty() {
            return None;
        }
        let name = path.strip_prefix('/').unwrap_or(path);
        // The service's key, `service/`, is the start of the name itself: no allocation.
        let service = name.rfind('/').map_or("", |slash| &name[..=slash]);
        self.methods
            .get(name)
            .or_else(|| self.methods.get(service))
            .or_else(|| self.methods.get(""))
    }
}

fn invalid(message: impl Into<String>) -> Status {
    Status::invalid_argument(message.into())
}

fn object<'a>(value: &'a Value, what: &str) -> Result<&'a Map<String, Value>, Status> {
    value
        .as_object()
        .ok_or_else(|| invalid(format!("{what} must be an object")))
}

/// `service/method`, `service/`, or `""` for the default; a method without a service is
/// invalid.
fn method_key(name: &Map<String, Value>) -> Result<String, Status> {
    let field = |key: &str| match name.get(key) {
        None => Ok(""),
        Some(Value::String(s)) => Ok(s.as_str()),
        Some(_) => Err(invalid(format!("methodConfig name.{key} must be a string"))),
    };
    let (service, method) = (field("service")?, field("method")?);
    if service.is_empty() && !method.is_empty() {
        return Err(invalid(format!(
            "methodConfig name has method {method:?} but no service"
        )));
    }
    Ok(if service.is_empty() {
        String::new()
    } else {
        format!("{service}/{method}")
    })
}

fn parse_method_config(entry: &Map<String, Value>) -> Result<MethodConfig, Status> {
    let mut method = MethodConfig {
        wait_for_ready: match entry.get("waitForReady") {
            None => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(_) => return Err(invalid("waitForReady must be true or false")),
        },
        timeout: entry.get("timeout").map(parse_json_duration).transpose()?,
        max_request_message_bytes: entry
            .get("maxRequestMessageBytes")
            .map(|v| json_u64(v, "maxRequestMessageBytes"))
            .transpose()?
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        max_response_message_bytes: entry
            .get("maxResponseMessageBytes")
            .map(|v| json_u64(v, "maxResponseMessageBytes"))
            .transpose()?
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        attempts: None,
    };
    method.attempts = match (entry.get("retryPolicy"), entry.get("hedgingPolicy")) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "a methodConfig entry may have a retryPolicy or a hedgingPolicy, not both",
            ))
        }
        (Some(retry), None) => Some(AttemptPolicy::Retry(parse_retry(retry)?)),
        (None, Some(hedging)) => Some(AttemptPolicy::Hedging(parse_hedging(hedging)?)),
        (None, None) => None,
    };
    Ok(method)
}

fn parse_retry(value: &Value) -> Result<RetryPolicy, Status> {
    let policy = object(value, "retryPolicy")?;
    let positive_duration = |key: &str| {
        let d = parse_json_duration(
            policy
                .get(key)
                .ok_or_else(|| invalid(format!("retryPolicy.{key} is required")))?,
        )?;
        if d.is_zero() {
            return Err(invalid(format!("retryPolicy.{key} must be above zero")));
        }
        Ok(d)
    };
    let multiplier = policy
        .get("backoffMultiplier")
        .and_then(Value::as_f64)
        .filter(|m| *m > 0.0 && m.is_finite())
        .ok_or_else(|| invalid("retryPolicy.backoffMultiplier must be a number above zero"))?;
    let codes = policy
        .get("retryableStatusCodes")
        .ok_or_else(|| invalid("retryPolicy.retryableStatusCodes is required"))?;
    let retryable_status_codes = parse_codes(codes, "retryPolicy.retryableStatusCodes")?;
    if retryable_status_codes.is_empty() {
        return Err(invalid(
            "retryPolicy.retryableStatusCodes must not be empty",
        ));
    }
    Ok(RetryPolicy {
        max_attempts: max_attempts(policy, "retryPolicy")?,
        initial_backoff: positive_duration("initialBackoff")?,
        max_backoff: positive_duration("maxBackoff")?,
        backoff_multiplier: multiplier,
        retryable_status_codes,
    })
}

fn parse_hedging(value: &Value) -> Result<HedgingPolicy, Status> {
    let policy = object(value, "hedgingPolicy")?;
    Ok(HedgingPolicy {
        max_attempts: max_attempts(policy, "hedgingPolicy")?,
        hedging_delay: policy
            .get("hedgingDelay")
            .map(parse_json_duration)
            .transpose()?
            .unwrap_or_default(),
        non_fatal_status_codes: policy
            .get("nonFatalStatusCodes")
            .map(|codes| parse_codes(codes, "hedgingPolicy.nonFatalStatusCodes"))
            .transpose()?
            .unwrap_or_default(),
    })
}

fn max_attempts(policy: &Map<String, Value>, what: &str) -> Result<u32, Status> {
    policy
        .get("maxAttempts")
        .map(|v| json_u64(v, "maxAttempts"))
        .transpose()?
        .filter(|n| *n > 1)
        .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
        .ok_or_else(|| invalid(format!("{what}.maxAttempts must be an integer above 1")))
}

fn parse_throttling(value: &Value) -> Result<ThrottleConfig, Status> {
    let throttling = object(value, "retryThrottling")?;
    let max_tokens = throttling
        .get("maxTokens")
        .map(|v| json_u64(v, "retryThrottling.maxTokens"))
        .transpose()?
        .filter(|n| (1..=1000).contains(n))
        .ok_or_else(|| invalid("retryThrottling.maxTokens must be in 1..=1000"))?;
    let ratio = throttling
        .get("tokenRatio")
        .and_then(Value::as_f64)
        .filter(|r| *r > 0.0 && r.is_finite())
        .ok_or_else(|| invalid("retryThrottling.tokenRatio must be a number above zero"))?;
    // A6: three decimal places; more are dropped, and what is left must still be above zero.
    let token_ratio_milli = (ratio * 1000.0).min(u32::MAX as f64) as u32;
    if token_ratio_milli == 0 {
        return Err(invalid("retryThrottling.tokenRatio must be at least 0.001"));
    }
    Ok(ThrottleConfig {
        max_tokens_milli: max_tokens as u32 * 1000,
        token_ratio_milli,
    })
}

/// A JSON integer, or a protobuf-JSON integer written as a string.
fn json_u64(value: &Value, what: &str) -> Result<u64, Status> {
    match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
    .ok_or_else(|| invalid(format!("{what} must be a non-negative integer")))
}

/// Status codes by name (`"UNAVAILABLE"`, any case) or number.
fn parse_codes(value: &Value, what: &str) -> Result<CodeSet, Status> {
    let list = value
        .as_array()
        .ok_or_else(|| invalid(format!("{what} must be a list")))?;
    list.iter().try_fold(CodeSet::default(), |set, code| {
        let parsed = match code {
            Value::String(name) => Code::from_name(&name.to_ascii_uppercase()),
            Value::Number(n) => n
                .as_u64()
                .and_then(|n| i32::try_from(n).ok())
                .map(Code::from_i32)
                .filter(|c| *c as u64 == n.as_u64().unwrap_or(u64::MAX)),
            _ => None,
        };
        parsed
            .map(|c| set.with(c))
            .ok_or_else(|| invalid(format!("{what}: {code} is not a status code")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"{
        "loadBalancingConfig": [{"round_robin": {}}],
        "healthCheckConfig": {"serviceName": "svc"},
        "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1234},
        "methodConfig": [
            {"name": [{"service": "pkg.Echo", "method": "Unary"}],
             "timeout": "1.5s", "waitForReady": true,
             "maxRequestMessageBytes": 1024, "maxResponseMessageBytes": "2048",
             "retryPolicy": {"maxAttempts": 4, "initialBackoff": "0.1s", "maxBackoff": "1s",
                             "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE", "aborted", 8]}},
            {"name": [{"service": "pkg.Echo"}],
             "hedgingPolicy": {"maxAttempts": 3, "hedgingDelay": "0.05s", "nonFatalStatusCodes": ["UNAVAILABLE"]}},
            {"name": [{}], "timeout": "10s"}
        ]
    }"#;

    #[test]
    fn parses_every_field() {
        let config = ServiceConfig::parse(CONFIG).unwrap();
        assert_eq!(
            config.load_balancing_config,
            Some(serde_json::json!([{"round_robin": {}}]))
        );
        assert_eq!(config.health_check_service_name.as_deref(), Some("svc"));
        assert_eq!(
            config.retry_throttling,
            Some(ThrottleConfig {
                max_tokens_milli: 10_000,
                token_ratio_milli: 123
            })
        );
        let unary = config.method("/pkg.Echo/Unary").unwrap();
        assert_eq!(unary.timeout, Some(Duration::from_millis(1500)));
        assert_eq!(unary.wait_for_ready, Some(true));
        assert_eq!(unary.max_request_message_bytes, Some(1024));
        assert_eq!(unary.max_response_message_bytes, Some(2048));
        let Some(AttemptPolicy::Retry(retry)) = &unary.attempts else {
            panic!("retry policy expected");
        };
        assert_eq!(retry.max_attempts, 4);
        assert_eq!(retry.initial_backoff, Duration::from_millis(100));
        assert_eq!(retry.backoff_multiplier, 2.0);
        for code in [Code::Unavailable, Code::Aborted, Code::ResourceExhausted] {
            assert!(retry.retryable_status_codes.contains(code));
        }
        assert!(!retry.retryable_status_codes.contains(Code::InvalidArgument));
    }

    #[test]
    fn names_match_method_then_service_then_default() {
        let config = ServiceConfig::parse(CONFIG).unwrap();
        let other = config.method("/pkg.Echo/Stream").unwrap();
        assert!(matches!(other.attempts, Some(AttemptPolicy::Hedging(ref h))
            if h.max_attempts == 3 && h.hedging_delay == Duration::from_millis(50)));
        let default = config.method("/other.Svc/M").unwrap();
        assert_eq!(default.timeout, Some(Duration::from_secs(10)));
        assert!(ServiceConfig::default().method("/pkg.Echo/Unary").is_none());
        let deprecated = ServiceConfig::parse(r#"{"loadBalancingPolicy":"ROUND_ROBIN"}"#).unwrap();
        assert_eq!(
            deprecated.load_balancing_config,
            Some(serde_json::json!([{"round_robin": {}}]))
        );
    }

    #[test]
    fn rejects_invalid_configs_with_the_field_named() {
        let retry = |fields: &str| {
            format!(
                r#"{{"methodConfig":[{{"name":[{{"service":"s"}}],"retryPolicy":{{{fields}}}}}]}}"#
            )
        };
        let ok = r#""maxAttempts":2,"initialBackoff":"1s","maxBackoff":"1s","backoffMultiplier":1,"retryableStatusCodes":["UNAVAILABLE"]"#;
        assert!(ServiceConfig::parse(&retry(ok)).is_ok());
        for (bad, field) in [
            (
                ok.replace("\"maxAttempts\":2", "\"maxAttempts\":1"),
                "maxAttempts",
            ),
            (
                ok.replace("\"1s\",\"maxBackoff\"", "\"0s\",\"maxBackoff\""),
                "initialBackoff",
            ),
            (
                ok.replace("\"backoffMultiplier\":1", "\"backoffMultiplier\":0"),
                "backoffMultiplier",
            ),
            (
                ok.replace("[\"UNAVAILABLE\"]", "[]"),
                "retryableStatusCodes",
            ),
            (
                ok.replace("[\"UNAVAILABLE\"]", "[\"NOPE\"]"),
                "retryableStatusCodes",
            ),
            (
                ok.replace("[\"UNAVAILABLE\"]", "[17]"),
                "retryableStatusCodes",
            ),
        ] {
            let err = ServiceConfig::parse(&retry(&bad)).unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument);
            assert!(err.message().contains(field), "{field}: {}", err.message());
        }
        for bad in [
            "[]",
            "not json",
            r#"{"methodConfig":[{"name":[{"method":"m"}]}]}"#,
            r#"{"methodConfig":[{"name":[{"service":"s"}]},{"name":[{"service":"s"}]}]}"#,
            r#"{"methodConfig":[{"name":[{"service":"s"}],"timeout":"1m"}]}"#,
            r#"{"methodConfig":[{"name":[{}],"retryPolicy":{},"hedgingPolicy":{}}]}"#,
            r#"{"retryThrottling":{"maxTokens":1001,"tokenRatio":1}}"#,
            r#"{"retryThrottling":{"maxTokens":10,"tokenRatio":0.0001}}"#,
            r#"{"healthCheckConfig":{"serviceName":1}}"#,
        ] {
            let err = ServiceConfig::parse(bad).unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{bad}");
        }
    }
}
