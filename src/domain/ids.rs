//! Identities: parsed once at the edge, impossible to hold an invalid value past it.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// Longest identity, in characters (ASCII, so also bytes).
pub const ID_CHARS_MAX: usize = 64;

/// Checks the identity rule shared by every id type: 1–64 of `a-z 0-9 - _ .`.
pub fn check_id(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > ID_CHARS_MAX {
        return Err(format!("must be at most {ID_CHARS_MAX} characters"));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '-' | '_' | '.'))
    {
        return Err(format!("may only contain a-z, 0-9, '-', '_' and '.' (found {c:?})"));
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        /// Shown as the quoted id, as users wrote it.
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", self.0)
            }
        }

        impl $name {
            pub fn parse(s: &str) -> Result<Self, String> {
                check_id(s)?;
                Ok(Self(s.to_owned()))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// A campus with one electrical bus.
    SiteId
);
id_type!(
    /// A meter measuring one asset or one tenant load at one site.
    MeterId
);
id_type!(
    /// A consumer of energy and holder of EU.
    TenantId
);
id_type!(
    /// A generator, a battery or a grid tie.
    AssetId
);
id_type!(
    /// A reservation of a tenant's EU (chosen by the client; unique across the ledger).
    HoldId
);
id_type!(
    /// A compute job of a tenant, named by its scheduler (readings and holds may carry it).
    JobId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_accept_the_allowed_alphabet() {
        assert!(SiteId::parse("memphis-1").is_ok());
        assert!(MeterId::parse("a.b_c-9").is_ok());
        assert!(TenantId::parse(&"x".repeat(64)).is_ok());
    }

    #[test]
    fn ids_refuse_empty_long_and_foreign_characters() {
        assert!(SiteId::parse("").is_err());
        assert!(SiteId::parse(&"x".repeat(65)).is_err());
        assert!(SiteId::parse("Memphis").is_err());
        assert!(SiteId::parse("a b").is_err());
        assert!(SiteId::parse("a/b").is_err());
        assert!(SiteId::parse("é").is_err());
    }
}
