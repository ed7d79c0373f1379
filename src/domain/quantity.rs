//! Wh and EU quantities over `rust_decimal`: never floats, carried in JSON as strings.

use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// Wh are recorded to the milliwatt-hour.
pub const ENERGY_WH_SCALE_MAX: u32 = 3;
/// EU are recorded to the millionth; prices are rounded to this once.
pub const AMOUNT_EU_SCALE_MAX: u32 = 6;
/// The largest quantity the ledger accepts in one command (Wh or EU): 10^18.
/// Far above any physical reading, far below `Decimal`'s range, so sums of a
/// long history cannot overflow.
pub const QUANTITY_MAX: Decimal = Decimal::from_parts(0xA764_0000, 0x0DE0_B6B3, 0, false, 0);

/// Parses a plain decimal string (`"12500.125"`, `"-3"`), refusing exponents,
/// empty strings, `NaN`, infinities and anything `Decimal` cannot hold exactly.
pub fn parse_decimal(s: &str) -> Result<Decimal, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("must be a decimal number, got an empty string".into());
    }
    if t.len() > 40
        || !t
            .chars()
            .all(|c| c.is_ascii_digit() || c == '.' || c == '-' || c == '+')
    {
        return Err(format!("must be a plain decimal number such as \"12.5\", got {s:?}"));
    }
    let d = Decimal::from_str_exact(t)
        .map_err(|_| format!("must be a plain decimal number such as \"12.5\", got {s:?}"))?;
    if d.abs() > QUANTITY_MAX {
        return Err(format!("must be at most {QUANTITY_MAX} in magnitude"));
    }
    Ok(d)
}

/// Renders a decimal without trailing zeros (`"742500"`, `"1.65"`).
pub fn fmt_decimal(d: &Decimal) -> String {
    let mut out = String::with_capacity(24);
    write_decimal(&mut out, d);
    out
}

/// `m · 10^-scale` with the zeros it ends in dropped (as long as the scale allows).
fn strip_trailing_zeros<T>(mut m: T, mut scale: usize) -> (T, usize)
where
    T: Copy + PartialEq + From<i8> + std::ops::Rem<Output = T> + std::ops::Div<Output = T>,
{
    let (ten, zero) = (T::from(10), T::from(0));
    while scale > 0 && m % ten == zero {
        m = m / ten;
        scale -= 1;
    }
    (m, scale)
}

/// Appends [`fmt_decimal`]'s text, `d.normalize().to_string()`, from the mantissa's digits
/// (the `Display` of `rust_decimal` through `fmt::write` was a tenth of the deciding
/// thread's profile: a reading's data holds six decimals). A test checks both agree.
pub fn write_decimal(out: &mut String, d: &Decimal) {
    let (m, scale) = (d.mantissa(), d.scale() as usize);
    // The trailing zeros in 64 bits when the mantissa fits (always, for the ledger's
    // amounts): a 128-bit division is a call to a runtime routine.
    let (m, scale) = match i64::try_from(m) {
        Ok(small) => {
            let (small, scale) = strip_trailing_zeros(small, scale);
            (i128::from(small), scale)
        }
        Err(_) => strip_trailing_zeros(m, scale),
    };
    if m == 0 {
        out.push('0');
        return;
    }
    if m < 0 {
        out.push('-');
    }
    // A mantissa has at most 29 digits; a scale at most 28.
    let mut buf = [b'0'; 64];
    let mut at = buf.len();
    let mut u = m.unsigned_abs();
    while u > u128::from(u64::MAX) {
        at -= 1;
        buf[at] = b'0' + (u % 10) as u8;
        u /= 10;
    }
    let mut v = u as u64;
    while v > 0 {
        at -= 1;
        buf[at] = b'0' + (v % 10) as u8;
        v /= 10;
    }
    // Leading zeros up to one before the point: `0.0015`.
    at = at.min(buf.len() - scale - 1);
    let point = buf.len() - scale;
    out.push_str(std::str::from_utf8(&buf[at..point]).expect("ASCII digits"));
    if scale > 0 {
        out.push('.');
        out.push_str(std::str::from_utf8(&buf[point..]).expect("ASCII digits"));
    }
}

/// Rounds an EU amount once, to 6 decimals, half to even.
pub fn round_eu(d: Decimal) -> Decimal {
    d.round_dp_with_strategy(AMOUNT_EU_SCALE_MAX, RoundingStrategy::MidpointNearestEven)
}

/// Rounds Wh to 3 decimals, half to even (only for pro-rata shares).
pub fn round_wh(d: Decimal) -> Decimal {
    d.round_dp_with_strategy(ENERGY_WH_SCALE_MAX, RoundingStrategy::MidpointNearestEven)
}

/// Serde helpers for `Decimal` fields carried as JSON strings.
pub mod decimal_str {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Decimal, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&fmt_decimal(d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
        deserialize_decimal(d)?.map_err(serde::de::Error::custom)
    }
}

/// A decimal as [`decimal_from_json`] reads it, or its refusal, without building a
/// `serde_json::Value` for the usual case: a string (as every stored event carries its
/// decimals) is parsed straight from the text. Any other JSON value is built and handed to
/// [`decimal_from_json`], so numbers keep their exact text and refusals their wording.
pub fn deserialize_decimal<'de, D: Deserializer<'de>>(d: D) -> Result<Result<Decimal, String>, D::Error> {
    use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
    use serde_json::Value;
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Result<Decimal, String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a decimal number")
        }
        fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
            Ok(parse_decimal(s))
        }
        fn visit_bool<E>(self, b: bool) -> Result<Self::Value, E> {
            Ok(decimal_from_json(&Value::Bool(b)))
        }
        fn visit_i64<E>(self, n: i64) -> Result<Self::Value, E> {
            Ok(decimal_from_json(&Value::from(n)))
        }
        fn visit_u64<E>(self, n: u64) -> Result<Self::Value, E> {
            Ok(decimal_from_json(&Value::from(n)))
        }
        fn visit_f64<E>(self, n: f64) -> Result<Self::Value, E> {
            Ok(decimal_from_json(&Value::from(n)))
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(decimal_from_json(&Value::Null))
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(decimal_from_json(&Value::Null))
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, a: A) -> Result<Self::Value, A::Error> {
            Value::deserialize(SeqAccessDeserializer::new(a)).map(|v| decimal_from_json(&v))
        }
        /// Also how serde_json's `arbitrary_precision` hands over a number.
        fn visit_map<A: serde::de::MapAccess<'de>>(self, a: A) -> Result<Self::Value, A::Error> {
            Value::deserialize(MapAccessDeserializer::new(a)).map(|v| decimal_from_json(&v))
        }
    }
    d.deserialize_any(V)
}

/// Serde helpers for `Option<Decimal>` fields carried as JSON strings.
pub mod opt_decimal_str {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Option<Decimal>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&fmt_decimal(d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Decimal>, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        if v.is_null() {
            return Ok(None);
        }
        decimal_from_json(&v).map(Some).map_err(serde::de::Error::custom)
    }
}

/// A decimal from a JSON string or number. Numbers keep their exact text
/// (serde_json's `arbitrary_precision`), so nothing passes through `f64`.
pub fn decimal_from_json(v: &serde_json::Value) -> Result<Decimal, String> {
    match v {
        serde_json::Value::String(s) => parse_decimal(s),
        serde_json::Value::Number(n) => parse_decimal(&n.to_string()),
        other => Err(format!(
            "must be a decimal number (a string such as \"12.5\"), got {}",
            json_kind(other)
        )),
    }
}

pub fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

macro_rules! quantity {
    ($(#[$doc:meta])* $name:ident, $scale:expr, $unit:literal, nonneg = $nonneg:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(Decimal);

        impl $name {
            pub const ZERO: Self = Self(Decimal::ZERO);

            pub fn parse(s: &str) -> Result<Self, String> {
                Self::new(parse_decimal(s)?)
            }

            pub fn new(d: Decimal) -> Result<Self, String> {
                if $nonneg && d.is_sign_negative() && !d.is_zero() {
                    return Err(format!("must not be negative, got {}", fmt_decimal(&d)));
                }
                if d.normalize().scale() > $scale {
                    return Err(format!(
                        "must have at most {} decimal places ({}), got {}",
                        $scale,
                        $unit,
                        fmt_decimal(&d)
                    ));
                }
                if d.abs() > QUANTITY_MAX {
                    return Err(format!("must be at most {QUANTITY_MAX} in magnitude"));
                }
                Ok(Self(d.normalize()))
            }

            pub fn from_json(v: &serde_json::Value) -> Result<Self, String> {
                Self::new(decimal_from_json(v)?)
            }

            pub fn value(self) -> Decimal {
                self.0
            }

            pub fn is_zero(self) -> bool {
                self.0.is_zero()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&fmt_decimal(&self.0))
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                Self::parse(s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&fmt_decimal(&self.0))
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                deserialize_decimal(d)?
                    .and_then(Self::new)
                    .map_err(serde::de::Error::custom)
            }
        }
    };
}

quantity!(
    /// Physical energy in watt-hours: never negative, at most 3 decimals.
    EnergyWh, ENERGY_WH_SCALE_MAX, "Wh", nonneg = true
);
quantity!(
    /// An amount of energy units: at most 6 decimals, any sign.
    AmountEu, AMOUNT_EU_SCALE_MAX, "EU", nonneg = false
);

#[cfg(test)]
mod tests {
    use super::*;

    /// The digits written from the mantissa are what `rust_decimal` writes for the
    /// normalized decimal: every scale, both signs, zeros, the largest mantissas.
    #[test]
    fn decimals_are_written_as_rust_decimal_writes_them_normalized() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(6);
        let mut cases = vec![
            Decimal::ZERO,
            Decimal::new(0, 5),
            -Decimal::new(0, 3),
            Decimal::ONE,
            Decimal::NEGATIVE_ONE,
            Decimal::MAX,
            Decimal::MIN,
            Decimal::new(1, 28),
            Decimal::new(-1, 28),
            Decimal::new(15, 4),
            Decimal::new(1_650_000, 6),
            Decimal::new(742_500, 0),
            Decimal::from_i128_with_scale(u64::MAX as i128 + 1, 3),
            Decimal::from_i128_with_scale(u64::MAX as i128 * 1000, 20),
            Decimal::from_i128_with_scale(i64::MIN.into(), 19),
            Decimal::from_i128_with_scale(i64::MAX.into(), 1),
            Decimal::from_i128_with_scale(i128::from(i64::MAX) + 1, 18),
            Decimal::from_i128_with_scale(-9_000_000_000_000_000_000, 28),
        ];
        for _ in 0..20_000 {
            let bits: u32 = rng.gen_range(1..=96);
            let m: i128 = rng.gen_range(0..(1i128 << bits).min(Decimal::MAX.mantissa()));
            let m = if rng.gen_bool(0.5) { -m } else { m };
            cases.push(Decimal::from_i128_with_scale(m, rng.gen_range(0..=28)));
        }
        for d in cases {
            let mut out = String::from("x");
            write_decimal(&mut out, &d);
            assert_eq!(out, format!("x{}", d.normalize()), "{d:?}");
            assert_eq!(fmt_decimal(&d), d.normalize().to_string(), "{d:?}");
        }
    }

    /// Read straight from the text or through a `Value`, a decimal comes out the same, and
    /// so does every refusal's wording.
    #[test]
    fn decimals_read_from_the_text_are_the_decimals_read_through_a_value() {
        #[derive(serde::Deserialize)]
        struct D {
            #[serde(with = "decimal_str")]
            d: Decimal,
        }
        #[derive(serde::Deserialize)]
        struct E {
            e: EnergyWh,
        }
        for json in [
            r#""12.50""#,
            r#""-3""#,
            r#""""#,
            r#""1e5""#,
            r#""NaN""#,
            r#""0.0001""#,
            "12.5",
            "-7",
            "123456789012345.125",
            "1e400",
            "18446744073709551616",
            "true",
            "null",
            "[1]",
            r#"{"a":1}"#,
        ] {
            let through_value = |v: &str| {
                let v: serde_json::Value = serde_json::from_str(v).unwrap();
                (decimal_from_json(&v), EnergyWh::from_json(&v))
            };
            let (want_d, want_e) = through_value(json);
            let got_d = serde_json::from_str::<D>(&format!(r#"{{"d":{json}}}"#)).map(|x| x.d);
            let got_e = serde_json::from_str::<E>(&format!(r#"{{"e":{json}}}"#)).map(|x| x.e);
            match (want_d, got_d) {
                (Ok(w), Ok(g)) => assert_eq!((w, w.scale()), (g, g.scale()), "{json}"),
                (Err(w), Err(g)) => assert!(g.to_string().starts_with(&w), "{json}: {g} / {w}"),
                (w, g) => panic!("{json}: through a Value {w:?}, from the text {g:?}"),
            }
            match (want_e, got_e) {
                (Ok(w), Ok(g)) => assert_eq!(w, g, "{json}"),
                (Err(w), Err(g)) => assert!(g.to_string().starts_with(&w), "{json}: {g} / {w}"),
                (w, g) => panic!("{json}: through a Value {w:?}, from the text {g:?}"),
            }
        }
    }

    #[test]
    fn energy_parses_strings_and_numbers_exactly() {
        assert_eq!(EnergyWh::parse("12500.125").unwrap().to_string(), "12500.125");
        let v: serde_json::Value = serde_json::from_str("0.1").unwrap();
        assert_eq!(EnergyWh::from_json(&v).unwrap().to_string(), "0.1");
        let v: serde_json::Value = serde_json::from_str("123456789012345.125").unwrap();
        assert_eq!(EnergyWh::from_json(&v).unwrap().to_string(), "123456789012345.125");
    }

    #[test]
    fn energy_refuses_negative_too_precise_and_exotic() {
        assert!(EnergyWh::parse("-1").is_err());
        assert!(EnergyWh::parse("1.0001").is_err());
        assert!(EnergyWh::parse("1e3").is_err());
        assert!(EnergyWh::parse("NaN").is_err());
        assert!(EnergyWh::parse("").is_err());
        assert!(EnergyWh::parse(&"9".repeat(40)).is_err());
        let v: serde_json::Value = serde_json::from_str("1e400").unwrap();
        assert!(EnergyWh::from_json(&v).is_err());
        assert!(EnergyWh::from_json(&serde_json::Value::Bool(true)).is_err());
    }

    #[test]
    fn trailing_zeros_do_not_count_as_precision() {
        assert_eq!(EnergyWh::parse("1.5000").unwrap().to_string(), "1.5");
        assert_eq!(AmountEu::parse("-2.000000").unwrap().to_string(), "-2");
        assert!(AmountEu::parse("0.0000001").is_err());
    }

    #[test]
    fn rounding_is_half_to_even_at_six_places() {
        assert_eq!(
            round_eu(Decimal::from_str("0.0000005").unwrap()).to_string(),
            "0.000000"
        );
        assert_eq!(
            round_eu(Decimal::from_str("0.0000015").unwrap()).to_string(),
            "0.000002"
        );
        assert_eq!(
            round_eu(Decimal::from_str("2.0000025").unwrap()).to_string(),
            "2.000002"
        );
    }

    #[test]
    fn quantity_max_is_ten_to_the_eighteen() {
        assert_eq!(QUANTITY_MAX, Decimal::from_str("1000000000000000000").unwrap());
    }
}
