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

impl FromStr for Id {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(Id)
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
            "pattern": "^[0-9]{1,20}$"
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
}
