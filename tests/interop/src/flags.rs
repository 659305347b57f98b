//! Command-line flags in the reference interop programs' style: `--name=value` or
//! `--name value`, booleans as `--name`, `--name=true` or `--name=false`.

use std::collections::BTreeMap;

/// One flag a program accepts.
#[derive(Debug, Clone, Copy)]
pub struct Flag {
    /// Its name, without dashes.
    pub name: &'static str,
    /// The default value shown in `--help` (empty: none).
    pub default: &'static str,
    /// Whether it is a boolean switch.
    pub boolean: bool,
    /// What it does.
    pub help: &'static str,
}

/// Parsed flags.
#[derive(Debug, Default)]
pub struct Flags {
    values: BTreeMap<&'static str, String>,
}

/// What parsing decided.
#[derive(Debug)]
pub enum Parsed {
    /// Run with these flags.
    Run(Flags),
    /// `--help` was given: print this text and exit successfully.
    Help(String),
}

/// The `--help` text.
pub fn usage(program: &str, about: &str, spec: &[Flag]) -> String {
    let mut out = format!("{program}: {about}\n\nFlags:\n");
    for flag in spec {
        let value = if flag.boolean {
            String::new()
        } else {
            "=VALUE".to_owned()
        };
        let default = if flag.default.is_empty() {
            String::new()
        } else {
            format!(" (default: {})", flag.default)
        };
        out.push_str(&format!(
            "  --{}{value}\n      {}{default}\n",
            flag.name, flag.help
        ));
    }
    out.push_str("  --help\n      Print this help.\n");
    out
}

/// Parses `args` (without the program name) against `spec`.
pub fn parse(
    program: &str,
    about: &str,
    spec: &[Flag],
    args: impl IntoIterator<Item = String>,
) -> Result<Parsed, String> {
    let mut flags = Flags::default();
    for flag in spec {
        if !flag.default.is_empty() {
            flags.values.insert(flag.name, flag.default.to_owned());
        }
    }
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let Some(body) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            return Err(format!(
                "unexpected argument {arg:?}; flags look like --name=value"
            ));
        };
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_owned())),
            None => (body, None),
        };
        if name == "help" || name == "h" {
            return Ok(Parsed::Help(usage(program, about, spec)));
        }
        let Some(flag) = spec.iter().find(|f| f.name == name) else {
            let known: Vec<_> = spec.iter().map(|f| format!("--{}", f.name)).collect();
            return Err(format!(
                "unknown flag --{name}; known flags: {}",
                known.join(", ")
            ));
        };
        let value = match (inline, flag.boolean) {
            (Some(v), true) => match v.as_str() {
                "true" | "1" | "yes" => "true".to_owned(),
                "false" | "0" | "no" => "false".to_owned(),
                other => return Err(format!("--{name} takes true or false, not {other:?}")),
            },
            (Some(v), false) => v,
            (None, true) => "true".to_owned(),
            (None, false) => args
                .next()
                .ok_or_else(|| format!("--{name} needs a value"))?,
        };
        flags.values.insert(flag.name, value);
    }
    Ok(Parsed::Run(flags))
}

impl Flags {
    /// A flag's value, if set or defaulted.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// A boolean flag.
    pub fn bool(&self, name: &str) -> bool {
        self.get(name) == Some("true")
    }

    /// A numeric flag.
    pub fn number<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, String> {
        self.get(name)
            .map(|v| {
                v.parse()
                    .map_err(|_| format!("--{name}: {v:?} is not a valid number"))
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &[Flag] = &[
        Flag {
            name: "port",
            default: "8080",
            boolean: false,
            help: "port",
        },
        Flag {
            name: "use_tls",
            default: "false",
            boolean: true,
            help: "tls",
        },
        Flag {
            name: "test_case",
            default: "",
            boolean: false,
            help: "case",
        },
    ];

    fn run(args: &[&str]) -> Result<Flags, String> {
        match parse("p", "about", SPEC, args.iter().map(|s| s.to_string()))? {
            Parsed::Run(flags) => Ok(flags),
            Parsed::Help(_) => Err("help".into()),
        }
    }

    #[test]
    fn forms() {
        let f = run(&["--port=1", "--use_tls", "--test_case", "all"]).unwrap();
        assert_eq!(f.number::<u16>("port").unwrap(), Some(1));
        assert!(f.bool("use_tls"));
        assert_eq!(f.get("test_case"), Some("all"));
        let f = run(&["--use_tls=false"]).unwrap();
        assert!(!f.bool("use_tls"));
        assert_eq!(f.get("port"), Some("8080"));
        assert!(run(&["--nope=1"]).unwrap_err().contains("--port"));
        assert!(run(&["--use_tls=maybe"]).is_err());
        assert!(run(&["--port"]).is_err());
        assert_eq!(run(&["--help"]).unwrap_err(), "help");
        assert!(run(&["--port=x"]).unwrap().number::<u16>("port").is_err());
    }
}
