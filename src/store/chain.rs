//! The tamper-evident hash chain and the canonical JSON it hashes.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};
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

fn field(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_be_bytes());
    h.update(bytes);
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
    let mut h = Sha256::new();
    field(&mut h, prev_hash.as_bytes());
    h.update(position.to_be_bytes());
    field(&mut h, stream.as_bytes());
    h.update(version.to_be_bytes());
    h.update(event_id.as_bytes());
    field(&mut h, event_type.as_bytes());
    h.update(schema_version.to_be_bytes());
    field(&mut h, crate::domain::time::fmt_time(recorded_at).as_bytes());
    field(&mut h, data.as_bytes());
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_keys_at_every_depth() {
        let v: Value = serde_json::from_str(r#"{"b":1,"a":{"d":[{"z":1,"y":2}],"c":"x"}}"#).unwrap();
        assert_eq!(canonical_json(&v), r#"{"a":{"c":"x","d":[{"y":2,"z":1}]},"b":1}"#);
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
}
