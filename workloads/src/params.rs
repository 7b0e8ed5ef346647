//! Workload parameters: `key=value` arguments checked against a specification.

use alloc::collections::BTreeMap;
use alloc::string::{String, ToString};
use core::fmt;

/// One parameter a workload takes.
#[derive(Clone, Copy, Debug)]
pub struct ParamSpec {
    pub name: &'static str,
    /// The value when none is given, as text.
    pub default: &'static str,
    /// The values allowed, if it is a choice; otherwise it is a non-negative integer.
    pub choices: Option<&'static [&'static str]>,
    pub help: &'static str,
}

impl ParamSpec {
    pub const fn int(name: &'static str, default: &'static str, help: &'static str) -> Self {
        ParamSpec { name, default, choices: None, help }
    }

    pub const fn choice(
        name: &'static str,
        default: &'static str,
        choices: &'static [&'static str],
        help: &'static str,
    ) -> Self {
        ParamSpec { name, default, choices: Some(choices), help }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParamError {
    NotKeyValue(String),
    Unknown { key: String, known: String },
    NotInteger { key: String, value: String },
    NotAChoice { key: String, value: String, choices: String },
    OutOfRange { key: String, value: u64, why: &'static str },
}

impl fmt::Display for ParamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotKeyValue(word) => write!(f, "argument {word:?} is not key=value"),
            Self::Unknown { key, known } if known.is_empty() => write!(f, "unknown parameter {key:?} (takes none)"),
            Self::Unknown { key, known } => write!(f, "unknown parameter {key:?} (known: {known})"),
            Self::NotInteger { key, value } => write!(f, "{key}={value:?} is not a non-negative integer"),
            Self::NotAChoice { key, value, choices } => write!(f, "{key}={value:?} is not one of {choices}"),
            Self::OutOfRange { key, value, why } => write!(f, "{key}={value}: {why}"),
        }
    }
}

/// Checked parameter values, defaults filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Params {
    values: BTreeMap<String, String>,
}

impl Params {
    /// Checks `args` (`key=value` words) against `spec`.
    pub fn parse<'a>(spec: &[ParamSpec], args: impl IntoIterator<Item = &'a str>) -> Result<Params, ParamError> {
        let mut values: BTreeMap<String, String> =
            spec.iter().map(|p| (p.name.to_string(), p.default.to_string())).collect();
        for word in args {
            let (key, value) = word.split_once('=').ok_or_else(|| ParamError::NotKeyValue(word.to_string()))?;
            let Some(param) = spec.iter().find(|p| p.name == key) else {
                let known = spec.iter().map(|p| p.name).collect::<alloc::vec::Vec<_>>().join(", ");
                return Err(ParamError::Unknown { key: key.to_string(), known });
            };
            match param.choices {
                Some(choices) if !choices.contains(&value) => {
                    return Err(ParamError::NotAChoice {
                        key: key.to_string(),
                        value: value.to_string(),
                        choices: choices.join("|"),
                    });
                }
                None if value.parse::<u64>().is_err() => {
                    return Err(ParamError::NotInteger { key: key.to_string(), value: value.to_string() });
                }
                _ => {}
            }
            values.insert(key.to_string(), value.to_string());
        }
        Ok(Params { values })
    }

    /// An integer parameter. Panics if `key` is not an integer parameter of the spec.
    pub fn u64(&self, key: &str) -> u64 {
        self.values[key].parse().expect("integer parameters are checked by parse")
    }

    /// An integer parameter that must lie in `range`.
    pub fn u64_in(
        &self,
        key: &str,
        range: core::ops::RangeInclusive<u64>,
        why: &'static str,
    ) -> Result<u64, ParamError> {
        let value = self.u64(key);
        if range.contains(&value) {
            Ok(value)
        } else {
            Err(ParamError::OutOfRange { key: key.to_string(), value, why })
        }
    }

    /// A choice parameter.
    pub fn str(&self, key: &str) -> &str {
        &self.values[key]
    }

    /// All values, for the record.
    pub fn values(&self) -> &BTreeMap<String, String> {
        &self.values
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &[ParamSpec] = &[
        ParamSpec::int("threads", "0", "threads"),
        ParamSpec::choice("barrier", "spin", &["spin", "block"], "barrier kind"),
    ];

    #[test]
    fn defaults_and_overrides() {
        let params = Params::parse(SPEC, []).unwrap();
        assert_eq!(params.u64("threads"), 0);
        assert_eq!(params.str("barrier"), "spin");
        let params = Params::parse(SPEC, ["threads=8", "barrier=block"]).unwrap();
        assert_eq!(params.u64("threads"), 8);
        assert_eq!(params.str("barrier"), "block");
    }

    #[test]
    fn bad_arguments_are_named() {
        assert_eq!(Params::parse(SPEC, ["threads"]), Err(ParamError::NotKeyValue("threads".into())));
        assert!(matches!(Params::parse(SPEC, ["thread=1"]), Err(ParamError::Unknown { .. })));
        assert!(matches!(Params::parse(SPEC, ["threads=-1"]), Err(ParamError::NotInteger { .. })));
        assert!(matches!(Params::parse(SPEC, ["barrier=maybe"]), Err(ParamError::NotAChoice { .. })));
        let params = Params::parse(SPEC, ["threads=0"]).unwrap();
        assert!(params.u64_in("threads", 1..=64, "at least one").is_err());
    }
}
