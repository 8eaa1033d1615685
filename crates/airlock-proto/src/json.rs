//! proto3 canonical-JSON helpers for serde: `bytes` as standard base64,
//! 64-bit integers as strings (numbers accepted), and leniency on input.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{de, Deserialize, Deserializer, Serializer};

/// `bytes` fields: standard base64 with padding; input also accepts
/// unpadded and URL-safe alphabets, as protobuf JSON parsers do.
pub mod b64 {
    use super::*;

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = Option::<String>::deserialize(d)?.unwrap_or_default();
        decode_lenient(&s).map_err(de::Error::custom)
    }

    pub fn decode_lenient(s: &str) -> Result<Vec<u8>, String> {
        let cleaned: String = s
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '=')
            .map(|c| match c {
                '-' => '+',
                '_' => '/',
                c => c,
            })
            .collect();
        base64::engine::general_purpose::STANDARD_NO_PAD.decode(cleaned.as_bytes()).map_err(|e| format!("invalid base64: {e}"))
    }
}

/// `int64`/`uint64` fields: written as JSON strings, read from strings or numbers.
pub mod i64_str {
    use super::*;

    pub fn serialize<S: Serializer>(v: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum N {
            I(i64),
            F(f64),
            S(String),
        }
        match Option::<N>::deserialize(d)? {
            None => Ok(0),
            Some(N::I(i)) => Ok(i),
            Some(N::F(f)) => Ok(f as i64),
            Some(N::S(s)) => s.trim().parse().map_err(de::Error::custom),
        }
    }
}

/// 32-bit integers that some clients send as strings or floats.
pub fn lenient_u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum N {
        I(u64),
        F(f64),
        S(String),
    }
    match Option::<N>::deserialize(d)? {
        None => Ok(0),
        Some(N::I(i)) => u32::try_from(i).map_err(de::Error::custom),
        Some(N::F(f)) if f >= 0.0 && f <= u32::MAX as f64 => Ok(f as u32),
        Some(N::F(f)) => Err(de::Error::custom(format!("{f} out of range"))),
        Some(N::S(s)) => s.trim().parse().map_err(de::Error::custom),
    }
}

pub fn lenient_opt_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    lenient_u32(d).map(Some)
}

pub fn is_false(b: &bool) -> bool {
    !*b
}

pub fn is_zero_i32(v: &i32) -> bool {
    *v == 0
}

pub fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

pub fn is_zero_i64(v: &i64) -> bool {
    *v == 0
}

/// Declares a proto enum that serialises by name and deserialises from its
/// name or its number, as proto3 JSON requires.
#[macro_export]
macro_rules! proto_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $num:literal => $wire:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
        pub enum $name {
            #[default]
            $($variant),+
        }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $wire),+ }
            }
            pub fn number(self) -> i32 {
                match self { $(Self::$variant => $num),+ }
            }
            pub fn from_number(n: i64) -> Option<Self> {
                match n { $($num => Some(Self::$variant),)+ _ => None }
            }
            pub fn from_name(s: &str) -> Option<Self> {
                match s { $($wire => Some(Self::$variant),)+ _ => None }
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                #[derive(serde::Deserialize)]
                #[serde(untagged)]
                enum Raw { N(i64), S(String) }
                match Option::<Raw>::deserialize(d)? {
                    None => Ok(Self::default()),
                    Some(Raw::N(n)) => Self::from_number(n).ok_or_else(|| {
                        serde::de::Error::custom(format!("unknown {} value {n}", stringify!($name)))
                    }),
                    Some(Raw::S(s)) => Self::from_name(&s).ok_or_else(|| {
                        serde::de::Error::custom(format!("unknown {} value {s:?}", stringify!($name)))
                    }),
                }
            }
        }
    };
}
