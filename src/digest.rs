//! SHA-256, as the chain, the snapshot files and the id map's runs compute it.
//!
//! It is `ring`'s (already here for the tokens and TLS), which picks at run time the CPU's
//! SHA instructions, or AVX, or SSSE3. The `sha2` crate uses the SHA instructions too, but
//! falls back to portable code without them: on a host without them (PERFORMANCE §18) it
//! took 3.5–3.9 µs to hash a reading's record where this takes 2.0, and the record's hash
//! was a sixth of the embedded ingest's samples.

use ring::digest::{Context, SHA256};

/// An incremental SHA-256.
#[derive(Clone)]
pub struct Sha256(Context);

impl Default for Sha256 {
    fn default() -> Self {
        Self::new()
    }
}

impl Sha256 {
    pub fn new() -> Self {
        Self(Context::new(&SHA256))
    }

    pub fn update(&mut self, bytes: impl AsRef<[u8]>) {
        self.0.update(bytes.as_ref());
    }

    pub fn finalize(self) -> [u8; 32] {
        self.0.finish().as_ref().try_into().expect("a SHA-256 is 32 bytes")
    }

    /// The digest so far, and a fresh hasher in its place.
    pub fn finalize_reset(&mut self) -> [u8; 32] {
        std::mem::take(self).finalize()
    }

    /// The SHA-256 of `bytes`.
    pub fn digest(bytes: impl AsRef<[u8]>) -> [u8; 32] {
        let mut h = Self::new();
        h.update(bytes);
        h.finalize()
    }
}

#[cfg(test)]
mod tests {
    use super::Sha256;

    /// FIPS 180-2's examples, and a message fed in pieces across block boundaries.
    #[test]
    fn known_digests() {
        assert_eq!(
            hex::encode(Sha256::digest(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hex::encode(Sha256::digest(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let million_a = vec![b'a'; 1_000_000];
        let mut h = Sha256::new();
        for piece in million_a.chunks(97) {
            h.update(piece);
        }
        let mut again = h.clone();
        assert_eq!(
            hex::encode(h.finalize_reset()),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"
        );
        assert_eq!(h.finalize(), Sha256::digest(b""));
        again.update(b"");
        assert_eq!(again.finalize(), Sha256::digest(&million_a));
    }
}
