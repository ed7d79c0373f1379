//! The tamper-evident hash chain and the canonical JSON it hashes.

use crate::digest::Sha256;
use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

/// The `prev_hash` of the first event.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// JSON text with object keys sorted at every depth and no insignificant whitespace, so
/// that the same value always hashes the same whatever a backend does to key order.
pub fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::to_string(k).expect("string serialises"));
                out.push(':');
                write_canonical(&m[k.as_str()], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&serde_json::to_string(other).expect("scalar serialises")),
    }
}

/// The canonical JSON of any serialisable value, written straight from its `Serialize`
/// impl: byte for byte `canonical_json(&serde_json::to_value(v)?)`, without building the
/// `Value` tree. Only the fields of each object are buffered and sorted; scalars and
/// strings are written by `serde_json` itself. A shape the direct writer does not handle
/// (floats, byte strings, tuple or struct variants, serde_json's raw values, odd map keys)
/// takes the `Value` route, so the answer is the same for every type.
pub fn canonical_json_of<T: serde::Serialize + ?Sized>(v: &T) -> String {
    let mut w = canonical::Writer::default();
    match v.serialize(&mut w) {
        Ok(()) => String::from_utf8(w.out).expect("serde_json writes UTF-8"),
        Err(_) => canonical_json(&serde_json::to_value(v).expect("value serialises")),
    }
}

/// The writer behind [`canonical_json_of`].
mod canonical {
    use serde::ser::{self, Serialize};
    use std::borrow::Cow;
    use std::fmt;

    /// Not a real error: the shape is left to the `Value` route.
    #[derive(Debug)]
    pub struct Unsupported;

    impl fmt::Display for Unsupported {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("shape not written directly")
        }
    }

    impl std::error::Error for Unsupported {}

    impl ser::Error for Unsupported {
        fn custom<T: fmt::Display>(_: T) -> Self {
            Unsupported
        }
    }

    /// One member of an object being written: its key and where its value's JSON lies in
    /// the output buffer.
    type Member = (Cow<'static, str>, usize, usize);

    #[derive(Default)]
    pub struct Writer {
        pub out: Vec<u8>,
        /// The members of an object are copied here while they are put in key order.
        scratch: Vec<u8>,
        /// Member lists of finished objects, for reuse by the next.
        lists: Vec<Vec<Member>>,
    }

    impl Writer {
        fn json(&mut self) -> serde_json::Serializer<&mut Vec<u8>> {
            serde_json::Serializer::new(&mut self.out)
        }

        fn object(&mut self) -> Object<'_> {
            let members = self.lists.pop().unwrap_or_default();
            let start = self.out.len();
            Object {
                w: self,
                start,
                members,
                key: None,
            }
        }
    }

    macro_rules! via_json {
        ($($method:ident($ty:ty)),* $(,)?) => {
            $(fn $method(self, v: $ty) -> Result<(), Unsupported> {
                ser::Serializer::$method(&mut self.json(), v).map_err(|_| Unsupported)
            })*
        };
    }

    impl<'a> ser::Serializer for &'a mut Writer {
        type Ok = ();
        type Error = Unsupported;
        type SerializeSeq = Array<'a>;
        type SerializeTuple = Array<'a>;
        type SerializeTupleStruct = Array<'a>;
        type SerializeTupleVariant = ser::Impossible<(), Unsupported>;
        type SerializeMap = Object<'a>;
        type SerializeStruct = Object<'a>;
        type SerializeStructVariant = ser::Impossible<(), Unsupported>;

        via_json!(
            serialize_bool(bool),
            serialize_i8(i8),
            serialize_i16(i16),
            serialize_i32(i32),
            serialize_i64(i64),
            serialize_i128(i128),
            serialize_u8(u8),
            serialize_u16(u16),
            serialize_u32(u32),
            serialize_u64(u64),
            serialize_u128(u128),
            serialize_char(char),
            serialize_str(&str),
        );

        fn serialize_f32(self, _: f32) -> Result<(), Unsupported> {
            Err(Unsupported)
        }

        fn serialize_f64(self, _: f64) -> Result<(), Unsupported> {
            Err(Unsupported)
        }

        fn serialize_bytes(self, _: &[u8]) -> Result<(), Unsupported> {
            Err(Unsupported)
        }

        fn serialize_none(self) -> Result<(), Unsupported> {
            self.serialize_unit()
        }

        fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> Result<(), Unsupported> {
            v.serialize(self)
        }

        fn serialize_unit(self) -> Result<(), Unsupported> {
            self.out.extend_from_slice(b"null");
            Ok(())
        }

        fn serialize_unit_struct(self, _: &'static str) -> Result<(), Unsupported> {
            self.serialize_unit()
        }

        fn serialize_unit_variant(self, _: &'static str, _: u32, variant: &'static str) -> Result<(), Unsupported> {
            self.serialize_str(variant)
        }

        fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, v: &T) -> Result<(), Unsupported> {
            v.serialize(self)
        }

        fn serialize_newtype_variant<T: Serialize + ?Sized>(
            self,
            _: &'static str,
            _: u32,
            variant: &'static str,
            v: &T,
        ) -> Result<(), Unsupported> {
            self.out.push(b'{');
            ser::Serializer::serialize_str(&mut self.json(), variant).map_err(|_| Unsupported)?;
            self.out.push(b':');
            v.serialize(&mut *self)?;
            self.out.push(b'}');
            Ok(())
        }

        fn serialize_seq(self, _: Option<usize>) -> Result<Array<'a>, Unsupported> {
            self.out.push(b'[');
            Ok(Array { w: self, first: true })
        }

        fn serialize_tuple(self, len: usize) -> Result<Array<'a>, Unsupported> {
            self.serialize_seq(Some(len))
        }

        fn serialize_tuple_struct(self, _: &'static str, len: usize) -> Result<Array<'a>, Unsupported> {
            self.serialize_seq(Some(len))
        }

        fn serialize_tuple_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeTupleVariant, Unsupported> {
            Err(Unsupported)
        }

        fn serialize_map(self, _: Option<usize>) -> Result<Object<'a>, Unsupported> {
            Ok(self.object())
        }

        fn serialize_struct(self, name: &'static str, _: usize) -> Result<Object<'a>, Unsupported> {
            // serde_json's own magic structs (arbitrary-precision numbers, raw values).
            if name.starts_with("$serde_json::") {
                return Err(Unsupported);
            }
            Ok(self.object())
        }

        fn serialize_struct_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeStructVariant, Unsupported> {
            Err(Unsupported)
        }

        fn collect_str<T: fmt::Display + ?Sized>(self, v: &T) -> Result<(), Unsupported> {
            ser::Serializer::collect_str(&mut self.json(), v).map_err(|_| Unsupported)
        }
    }

    pub struct Array<'a> {
        w: &'a mut Writer,
        first: bool,
    }

    impl Array<'_> {
        fn element<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Unsupported> {
            if !self.first {
                self.w.out.push(b',');
            }
            self.first = false;
            v.serialize(&mut *self.w)
        }

        fn close(self) -> Result<(), Unsupported> {
            self.w.out.push(b']');
            Ok(())
        }
    }

    impl ser::SerializeSeq for Array<'_> {
        type Ok = ();
        type Error = Unsupported;
        fn serialize_element<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Unsupported> {
            self.element(v)
        }
        fn end(self) -> Result<(), Unsupported> {
            self.close()
        }
    }

    impl ser::SerializeTuple for Array<'_> {
        type Ok = ();
        type Error = Unsupported;
        fn serialize_element<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Unsupported> {
            self.element(v)
        }
        fn end(self) -> Result<(), Unsupported> {
            self.close()
        }
    }

    impl ser::SerializeTupleStruct for Array<'_> {
        type Ok = ();
        type Error = Unsupported;
        fn serialize_field<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Unsupported> {
            self.element(v)
        }
        fn end(self) -> Result<(), Unsupported> {
            self.close()
        }
    }

    /// An object: each member's value is written to the output as it comes, then on `end`
    /// the members are put in key order (the last of equal keys wins, as in a `Value` map).
    pub struct Object<'a> {
        w: &'a mut Writer,
        start: usize,
        members: Vec<Member>,
        /// A map key waiting for its value.
        key: Option<Cow<'static, str>>,
    }

    impl Object<'_> {
        fn member<T: Serialize + ?Sized>(&mut self, key: Cow<'static, str>, v: &T) -> Result<(), Unsupported> {
            let from = self.w.out.len();
            v.serialize(&mut *self.w)?;
            self.members.push((key, from, self.w.out.len()));
            Ok(())
        }

        fn close(mut self) -> Result<(), Unsupported> {
            let Writer { out, scratch, lists } = &mut *self.w;
            self.members.sort_by(|a, b| a.0.cmp(&b.0));
            scratch.clear();
            scratch.extend_from_slice(&out[self.start..]);
            out.truncate(self.start);
            out.push(b'{');
            let mut first = true;
            for (i, (key, from, to)) in self.members.iter().enumerate() {
                if self.members.get(i + 1).is_some_and(|next| next.0 == *key) {
                    continue;
                }
                if !first {
                    out.push(b',');
                }
                first = false;
                ser::Serializer::serialize_str(&mut serde_json::Serializer::new(&mut *out), key)
                    .map_err(|_| Unsupported)?;
                out.push(b':');
                out.extend_from_slice(&scratch[from - self.start..to - self.start]);
            }
            out.push(b'}');
            self.members.clear();
            lists.push(std::mem::take(&mut self.members));
            Ok(())
        }
    }

    impl ser::SerializeStruct for Object<'_> {
        type Ok = ();
        type Error = Unsupported;
        fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, v: &T) -> Result<(), Unsupported> {
            self.member(Cow::Borrowed(key), v)
        }
        fn end(self) -> Result<(), Unsupported> {
            self.close()
        }
    }

    impl ser::SerializeMap for Object<'_> {
        type Ok = ();
        type Error = Unsupported;
        fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Unsupported> {
            self.key = Some(Cow::Owned(key.serialize(KeyText)?));
            Ok(())
        }
        fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Unsupported> {
            let key = self.key.take().ok_or(Unsupported)?;
            self.member(key, v)
        }
        fn end(self) -> Result<(), Unsupported> {
            self.close()
        }
    }

    /// A map key as text: strings (and what serialises as one) only; anything else takes
    /// the `Value` route.
    struct KeyText;

    impl ser::Serializer for KeyText {
        type Ok = String;
        type Error = Unsupported;
        type SerializeSeq = ser::Impossible<String, Unsupported>;
        type SerializeTuple = ser::Impossible<String, Unsupported>;
        type SerializeTupleStruct = ser::Impossible<String, Unsupported>;
        type SerializeTupleVariant = ser::Impossible<String, Unsupported>;
        type SerializeMap = ser::Impossible<String, Unsupported>;
        type SerializeStruct = ser::Impossible<String, Unsupported>;
        type SerializeStructVariant = ser::Impossible<String, Unsupported>;

        fn serialize_str(self, v: &str) -> Result<String, Unsupported> {
            Ok(v.to_string())
        }
        fn serialize_char(self, v: char) -> Result<String, Unsupported> {
            Ok(v.to_string())
        }
        fn serialize_unit_variant(self, _: &'static str, _: u32, variant: &'static str) -> Result<String, Unsupported> {
            Ok(variant.to_string())
        }
        fn serialize_newtype_struct<T: Serialize + ?Sized>(
            self,
            _: &'static str,
            v: &T,
        ) -> Result<String, Unsupported> {
            v.serialize(self)
        }
        fn serialize_bool(self, _: bool) -> Result<String, Unsupported> {
            Err(Unsupported)
        }
        fn serialize_i8(self, _: i8) -> Result<String, Unsupported> {
            Err(Unsupported)
        }
        fn serialize_i16(self, _: i16) -> Result<String, Unsupported> {
            Err(Unsupported)
        }
        fn serialize_i32(self, _: i32) -> Result<String, Unsupported> {
            Err(Unsupported)
        }
        fn serialize_i64(self, _: i64) -> Result<String, Unsupported> {
            Err(Unsupported)
        }
        fn serialize_u8(self, _: u8) -> Result<String, Unsupported> {
            Err(Unsupported)
        }
        fn serialize_u16(self, _: u16) -> Result<String, Unsupported> {
            Err(Unsupported)
        }
        fn serialize_u32(self, _: u32) -> Result<String, Unsupported> {
            Err(Unsupported)
        }
        fn serialize_u64(self, _: u64) -> Result<String, Unsupported> {
            Err(Unsupported)
        }
        fn serialize_f32(self, _: f32) -> Result<String, Unsupported> {
            Err(Unsupported)
        }
        fn serialize_f64(self, _: f64) -> Result<String, Unsupported> {
            Err(Unsupported)
        }
        fn serialize_bytes(self, _: &[u8]) -> Result<String, Unsupported> {
            Err(Unsupported)
        }
        fn serialize_none(self) -> Result<String, Unsupported> {
            Err(Unsupported)
        }
        fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<String, Unsupported> {
            Err(Unsupported)
        }
        fn serialize_unit(self) -> Result<String, Unsupported> {
            Err(Unsupported)
        }
        fn serialize_unit_struct(self, _: &'static str) -> Result<String, Unsupported> {
            Err(Unsupported)
        }
        fn serialize_newtype_variant<T: Serialize + ?Sized>(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: &T,
        ) -> Result<String, Unsupported> {
            Err(Unsupported)
        }
        fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, Unsupported> {
            Err(Unsupported)
        }
        fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Unsupported> {
            Err(Unsupported)
        }
        fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeTupleStruct, Unsupported> {
            Err(Unsupported)
        }
        fn serialize_tuple_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeTupleVariant, Unsupported> {
            Err(Unsupported)
        }
        fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Unsupported> {
            Err(Unsupported)
        }
        fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeStruct, Unsupported> {
            Err(Unsupported)
        }
        fn serialize_struct_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeStructVariant, Unsupported> {
            Err(Unsupported)
        }
    }
}

/// The record's fields as SHA-256 takes them, gathered on the stack and fed in a few
/// pieces: fed field by field (fourteen calls, most of them eight bytes), the calls cost
/// more than the hashing of those bytes.
struct Fields {
    h: Sha256,
    buf: [u8; 256],
    len: usize,
}

impl Fields {
    fn put(&mut self, bytes: &[u8]) {
        if self.len + bytes.len() > self.buf.len() {
            self.h.update(&self.buf[..self.len]);
            self.len = 0;
            if bytes.len() > self.buf.len() {
                self.h.update(bytes);
                return;
            }
        }
        self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    /// A length-prefixed field.
    fn field(&mut self, bytes: &[u8]) {
        self.put(&(bytes.len() as u64).to_be_bytes());
        self.put(bytes);
    }

    fn finalize(mut self) -> [u8; 32] {
        self.h.update(&self.buf[..self.len]);
        self.h.finalize()
    }
}

/// `SHA-256(prev_hash ‖ canonical record)`, hex. Every field is length-prefixed, so no two
/// different records share an encoding.
#[allow(clippy::too_many_arguments)]
pub fn record_hash(
    prev_hash: &str,
    position: u64,
    stream: &str,
    version: u64,
    event_id: &Uuid,
    event_type: &str,
    schema_version: u32,
    recorded_at: &DateTime<Utc>,
    data: &str,
) -> String {
    let mut hex = [0u8; 64];
    record_hash_hex(
        prev_hash,
        position,
        stream,
        version,
        event_id,
        event_type,
        schema_version,
        &crate::domain::time::fmt_time(recorded_at),
        data,
        &mut hex,
    )
    .to_string()
}

/// [`record_hash`] written into `out` (no allocation), with `recorded_at` given as the text
/// `fmt_time` writes, which the caller stores too.
#[allow(clippy::too_many_arguments)]
pub fn record_hash_hex<'a>(
    prev_hash: &str,
    position: u64,
    stream: &str,
    version: u64,
    event_id: &Uuid,
    event_type: &str,
    schema_version: u32,
    recorded_at: &str,
    data: &str,
    out: &'a mut [u8; 64],
) -> &'a str {
    let mut h = Fields {
        h: Sha256::new(),
        buf: [0; 256],
        len: 0,
    };
    h.field(prev_hash.as_bytes());
    h.put(&position.to_be_bytes());
    h.field(stream.as_bytes());
    h.put(&version.to_be_bytes());
    h.put(event_id.as_bytes());
    h.field(event_type.as_bytes());
    h.put(&schema_version.to_be_bytes());
    h.field(recorded_at.as_bytes());
    h.field(data.as_bytes());
    hex::encode_to_slice(h.finalize(), out).expect("64 hex digits");
    std::str::from_utf8(out).expect("hex is ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_keys_at_every_depth() {
        let v: Value = serde_json::from_str(r#"{"b":1,"a":{"d":[{"z":1,"y":2}],"c":"x"}}"#).unwrap();
        assert_eq!(canonical_json(&v), r#"{"a":{"c":"x","d":[{"y":2,"z":1}]},"b":1}"#);
    }

    /// Shapes the direct writer handles, and ones it hands to the `Value` route: always the
    /// bytes of `canonical_json(&to_value(..))`.
    #[test]
    fn canonical_json_of_is_canonical_json_of_the_value() {
        use serde::Serialize;
        use std::collections::{BTreeMap, HashMap};

        fn same<T: Serialize>(v: &T) {
            let expected = canonical_json(&serde_json::to_value(v).unwrap());
            assert_eq!(canonical_json_of(v), expected);
        }

        #[derive(Serialize)]
        enum E {
            Unit,
            New(u8),
            Tuple(u8, u8),
            Struct { b: u8, a: u8 },
        }

        #[derive(Serialize)]
        struct Unit;

        #[derive(Serialize)]
        struct Empty {}

        #[derive(Serialize)]
        struct S {
            zeta: &'static str,
            alpha: Option<u64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            skipped: Option<u8>,
            nested: Vec<BTreeMap<&'static str, i128>>,
            escapes: String,
            #[serde(rename = "Upper")]
            upper: char,
            e: Vec<E>,
            unit: Unit,
            empty: Empty,
            tuple: (bool, u32, ()),
            float: f64,
        }
        let mut m = HashMap::new();
        for k in ["b", "a", "é", "\"", "\u{1}", "A", "aa", "", "z\n"] {
            m.insert(k.to_string(), vec![k.to_string(), "\u{7f}\u{2028}</script>".into()]);
        }
        same(&m);
        same(&BTreeMap::from([(1u32, "int keys"), (10, "x"), (2, "y")]));
        same(&BTreeMap::from([('b', 1u8), ('a', 2)]));
        let s = S {
            zeta: "z",
            alpha: None,
            skipped: None,
            nested: vec![BTreeMap::from([("y", -1), ("x", i128::MAX)]), BTreeMap::new()],
            escapes: "tab\t quote\" back\\ nul\u{0} ünï".into(),
            upper: '"',
            e: vec![E::Unit, E::New(3)],
            unit: Unit,
            empty: Empty {},
            tuple: (true, 7, ()),
            float: 0.1,
        };
        same(&s);
        same(&S { float: f64::NAN, ..s });
        same(&vec![E::Tuple(1, 2)]);
        same(&vec![E::Struct { b: 1, a: 2 }]);
        same(&serde_json::json!({"n": 1.5, "big": 123456789012345678901234567890u128, "s": {"b": [], "a": {}}}));
        same(&"just a string");
        same(&Option::<u8>::None);
    }

    #[test]
    fn every_field_changes_the_hash() {
        let t = Utc::now();
        let id = Uuid::nil();
        let base = record_hash(GENESIS_HASH, 1, "s", 1, &id, "T", 1, &t, "{}");
        assert_ne!(base, record_hash(GENESIS_HASH, 2, "s", 1, &id, "T", 1, &t, "{}"));
        assert_ne!(base, record_hash(GENESIS_HASH, 1, "s2", 1, &id, "T", 1, &t, "{}"));
        assert_ne!(base, record_hash(GENESIS_HASH, 1, "s", 2, &id, "T", 1, &t, "{}"));
        assert_ne!(
            base,
            record_hash(GENESIS_HASH, 1, "s", 1, &Uuid::max(), "T", 1, &t, "{}")
        );
        assert_ne!(base, record_hash(GENESIS_HASH, 1, "s", 1, &id, "U", 1, &t, "{}"));
        assert_ne!(base, record_hash(GENESIS_HASH, 1, "s", 1, &id, "T", 2, &t, "{}"));
        assert_ne!(base, record_hash(GENESIS_HASH, 1, "s", 1, &id, "T", 1, &t, "{ }"));
        assert_ne!(base, record_hash(&"1".repeat(64), 1, "s", 1, &id, "T", 1, &t, "{}"));
        assert_eq!(base, record_hash(GENESIS_HASH, 1, "s", 1, &id, "T", 1, &t, "{}"));
    }

    /// The hash of a known record (computed independently, with Python's `hashlib`, from
    /// the length-prefixed encoding): the stored chain must not change.
    const KNOWN_HASH: &str = "8ad532e58cd69a854c6f7cbf56f4d63f3812806cf6508a584fe8de0ae8d268d2";

    #[test]
    fn the_record_hash_of_a_known_record_is_unchanged() {
        let t = crate::domain::time::parse_time("2026-11-02T20:00:00.123Z").unwrap();
        let id = Uuid::parse_str("6f1c3e7a-52b4-5d0e-9a61-0c7d2b1f4e88").unwrap();
        let h = record_hash(
            GENESIS_HASH,
            7,
            "meter-m-1",
            3,
            &id,
            "EnergyConsumed",
            1,
            &t,
            r#"{"a":"b"}"#,
        );
        assert_eq!(h, KNOWN_HASH);
        let mut out = [0u8; 64];
        let text = crate::domain::time::fmt_time(&t);
        let hex = record_hash_hex(
            GENESIS_HASH,
            7,
            "meter-m-1",
            3,
            &id,
            "EnergyConsumed",
            1,
            &text,
            r#"{"a":"b"}"#,
            &mut out,
        );
        assert_eq!(hex, KNOWN_HASH);
    }

    /// Records whose fields do not fit the hasher's buffer, or cross its end: a stream
    /// longer than the buffer, data of 200 bytes after the short fields, a long stream and
    /// long data (computed independently with the Python `record_hash` of ARCHITECTURE §4).
    #[test]
    fn the_record_hash_of_long_fields_is_the_documented_one() {
        let id = Uuid::parse_str("6f1c3e7a-52b4-5d0e-9a61-0c7d2b1f4e88").unwrap();
        let prev = "ab".repeat(32);
        let t = |s| crate::domain::time::parse_time(s).unwrap();
        let cases = [
            (
                123_456_789,
                format!("meter-{}", "x".repeat(180)),
                42,
                "EnergyConsumed",
                1,
                t("2026-11-02T20:00:00.123Z"),
                format!(r#"{{"a":"{}"}}"#, "y".repeat(500)),
                "40d4f9529e814e908f47e7cebed2c2e5417f6482ed002fb5faf2b85d6fea7ce0",
            ),
            (
                8,
                "meter-m-1".to_string(),
                3,
                "EnergyConsumed",
                1,
                t("2026-11-02T20:00:00Z"),
                format!(r#"{{"b":"{}"}}"#, "z".repeat(192)),
                "e6780aad90ad7c044ea09a2fb4c05ee927cebe39f5b8d1d2411a3845ea8cc65d",
            ),
            (
                1,
                "s".repeat(300),
                1,
                "T",
                2,
                t("2026-11-02T20:00:00Z"),
                "{}".to_string(),
                "d23499d3464e3af87d82e18411b68091bee2109d975643655c5f7df1b8858329",
            ),
        ];
        for (position, stream, version, ty, schema, at, data, expected) in cases {
            let h = record_hash(&prev, position, &stream, version, &id, ty, schema, &at, &data);
            assert_eq!(h, expected, "stream of {} bytes, data of {}", stream.len(), data.len());
        }
    }
}
