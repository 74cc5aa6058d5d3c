//! 64-bit ids. On the wire they are decimal strings, because JavaScript numbers lose precision
//! past 2^53 and the web client must round-trip them exactly.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// A 64-bit id; on the wire a decimal string such as `"42"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[cfg_attr(feature = "schema", derive(ts_rs::TS), ts(type = "string"))]
pub struct Id(pub u64);

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Why a text is not an id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("an id is a decimal number below 2^64 with no sign, spaces or leading zeros")]
pub struct InvalidId;

impl FromStr for Id {
    type Err = InvalidId;
    /// Only the canonical form, the one [`Id`]'s `Display` writes: one id has one spelling, so
    /// `"+42"` or `"042"` never stands for 42.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let canonical = !s.is_empty()
            && s.bytes().all(|b| b.is_ascii_digit())
            && (s == "0" || !s.starts_with('0'));
        if !canonical {
            return Err(InvalidId);
        }
        s.parse().map(Id).map_err(|_| InvalidId)
    }
}

impl Serialize for Id {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map_err(|_| serde::de::Error::custom("id must be a decimal string"))
    }
}

#[cfg(feature = "schema")]
impl schemars::JsonSchema for Id {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Id".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A 64-bit id; on the wire a decimal string such as \"42\".",
            "type": "string",
            "pattern": "^(0|[1-9][0-9]{0,19})$"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trips_as_string(v in any::<u64>()) {
            let json = serde_json::to_string(&Id(v)).unwrap();
            prop_assert_eq!(&json, &format!("\"{v}\""));
            prop_assert_eq!(serde_json::from_str::<Id>(&json).unwrap(), Id(v));
        }
    }

    #[test]
    fn rejects_numbers_and_garbage() {
        assert!(serde_json::from_str::<Id>("12").is_err());
        assert!(serde_json::from_str::<Id>("\"x1\"").is_err());
        assert_eq!("42".parse::<Id>().unwrap(), Id(42));
    }

    #[test]
    fn only_the_canonical_spelling_is_an_id() {
        assert_eq!("0".parse::<Id>(), Ok(Id(0)));
        assert_eq!("18446744073709551615".parse::<Id>(), Ok(Id(u64::MAX)));
        for bad in [
            "",
            "+42",
            "-1",
            "042",
            "00",
            " 42",
            "42 ",
            "4_2",
            "18446744073709551616",
        ] {
            assert_eq!(bad.parse::<Id>(), Err(InvalidId), "{bad:?}");
            let json = format!("\"{bad}\"");
            assert!(serde_json::from_str::<Id>(&json).is_err(), "{bad:?}");
        }
    }
}
