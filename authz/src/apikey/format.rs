//! The API key format: `tgk_<id>_<secret><checksum>`, its generation from the OS RNG, parsing
//! that rejects malformed input before any store lookup, and the hash that is all a store keeps.
//!
//! Layout (47 ASCII characters, base62 = `[0-9A-Za-z]`):
//! - `tgk_`: a fixed prefix, so secret scanners and humans recognise a Tollgate key;
//! - 12 base62 characters: the public key id (≈71 bits, random), safe to log and show;
//! - `_`;
//! - 24 base62 characters: the secret (≈142.9 bits from the OS RNG);
//! - 6 base62 characters: CRC-32 of everything before it, so a scanner (or our own parser) can
//!   tell a real key from a look-alike without the store.
//!
//! Only base62 is used, so a key survives copy-paste, URLs and shell quoting unchanged.

use rand::TryRngCore;
use rand::distr::{Alphanumeric, Distribution};
use rand::rngs::OsRng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The fixed prefix of every key.
pub const PREFIX: &str = "tgk_";
/// Length of the public id.
pub const ID_LEN: usize = 12;
/// Length of the secret part (without checksum).
pub const SECRET_LEN: usize = 24;
/// Length of the checksum.
pub const CHECKSUM_LEN: usize = 6;
/// Total length of a key.
pub const KEY_LEN: usize = PREFIX.len() + ID_LEN + 1 + SECRET_LEN + CHECKSUM_LEN;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Why a presented string is not a well-formed key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("wrong length")]
    Length,
    #[error("missing `tgk_` prefix")]
    Prefix,
    #[error("invalid character")]
    Character,
    #[error("checksum mismatch")]
    Checksum,
}

/// A well-formed key, borrowed from the presented string.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ParsedKey<'a> {
    full: &'a str,
}

impl<'a> ParsedKey<'a> {
    /// The public id.
    pub fn id(&self) -> &'a str {
        &self.full[PREFIX.len()..PREFIX.len() + ID_LEN]
    }

    /// The hash a store keeps for this key.
    pub fn hash(&self) -> KeyHash {
        KeyHash::of(self.full)
    }
}

impl std::fmt::Debug for ParsedKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ParsedKey({PREFIX}{}_<redacted>)", self.id())
    }
}

/// Parses a presented key. Cheap (length, alphabet, CRC-32) and does no allocation, so a flood
/// of garbage costs no store lookup.
pub fn parse(presented: &str) -> Result<ParsedKey<'_>, FormatError> {
    let b = presented.as_bytes();
    if b.len() != KEY_LEN {
        return Err(FormatError::Length);
    }
    if !presented.starts_with(PREFIX) {
        return Err(FormatError::Prefix);
    }
    let sep = PREFIX.len() + ID_LEN;
    if b[sep] != b'_' {
        return Err(FormatError::Character);
    }
    if !b[PREFIX.len()..sep]
        .iter()
        .chain(&b[sep + 1..])
        .all(u8::is_ascii_alphanumeric)
    {
        return Err(FormatError::Character);
    }
    let body = KEY_LEN - CHECKSUM_LEN;
    if encode_checksum(crc32(&b[..body])) != b[body..] {
        return Err(FormatError::Checksum);
    }
    Ok(ParsedKey { full: presented })
}

/// Whether `id` has the shape of a key id (used to reject bad path parameters early).
pub fn is_valid_id(id: &str) -> bool {
    id.len() == ID_LEN && id.bytes().all(|c| c.is_ascii_alphanumeric())
}

/// A fresh random key id.
pub fn generate_id() -> String {
    random_base62(ID_LEN)
}

/// A fresh key for `id`: a new secret from the OS RNG plus its checksum.
pub fn generate_key(id: &str) -> String {
    debug_assert!(is_valid_id(id));
    let mut key = String::with_capacity(KEY_LEN);
    key.push_str(PREFIX);
    key.push_str(id);
    key.push('_');
    key.push_str(&random_base62(SECRET_LEN));
    let sum = encode_checksum(crc32(key.as_bytes()));
    key.push_str(std::str::from_utf8(&sum).expect("base62 is ASCII"));
    key
}

fn random_base62(n: usize) -> String {
    // Straight from the OS RNG rather than a userspace PRNG: keys are long-lived credentials and
    // generated rarely, so the syscall's cost does not matter. `Alphanumeric` samples base62
    // uniformly (rejection sampling), so every character carries log2(62) bits.
    let mut rng = OsRng.unwrap_err();
    Alphanumeric
        .sample_iter(&mut rng)
        .take(n)
        .map(char::from)
        .collect()
}

/// SHA-256 of a whole key, domain-separated.
///
/// A fast hash is the right tool here, unlike for passwords: the secret has ~143 bits of entropy
/// from the OS RNG, so even a leaked store cannot be brute-forced, and slow KDFs (argon2,
/// bcrypt) would only add milliseconds of CPU to every uncached Check. The id is hashed too, so
/// a hash is bound to its key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyHash(pub [u8; 32]);

impl KeyHash {
    pub fn of(key: &str) -> Self {
        let mut h = Sha256::new();
        h.update(b"tollgate-api-key-v1\0");
        h.update(key.as_bytes());
        Self(h.finalize().into())
    }

    /// Constant-time equality, so timing reveals nothing about how much of a hash matched.
    pub fn ct_eq(&self, other: &KeyHash) -> subtle::Choice {
        self.0.ct_eq(&other.0)
    }

    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 64 || !s.is_ascii() {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Self(out))
    }
}

/// Stored as 64 hex digits.
impl serde::Serialize for KeyHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for KeyHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let hex = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        KeyHash::from_hex(&hex).ok_or_else(|| serde::de::Error::custom("expected 64 hex digits"))
    }
}

impl std::fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyHash(..)")
    }
}

fn encode_checksum(mut v: u32) -> [u8; CHECKSUM_LEN] {
    let mut out = [b'0'; CHECKSUM_LEN];
    for o in out.iter_mut().rev() {
        *o = BASE62[(v % 62) as usize];
        v /= 62;
    }
    out
}

/// CRC-32 (IEEE 802.3, as zlib), table-driven: every Check with a well-formed key runs it.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc = CRC_TABLE[((crc ^ u32::from(byte)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 == 1 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn the_documented_example_is_a_valid_key() {
        // docs/api-keys.md; its checksum was computed with zlib's CRC-32.
        let key = parse("tgk_3fA9kQ2mZx7L_Vb0c1D2e3F4g5H6i7J8k9L0m26BcdE").unwrap();
        assert_eq!(key.id(), "3fA9kQ2mZx7L");
    }

    #[test]
    fn generated_keys_parse_and_carry_their_id() {
        let id = generate_id();
        assert!(is_valid_id(&id));
        let key = generate_key(&id);
        assert_eq!(key.len(), KEY_LEN);
        let parsed = parse(&key).unwrap();
        assert_eq!(parsed.id(), id);
        assert!(!format!("{parsed:?}").contains(&key[PREFIX.len() + ID_LEN + 1..]));
        assert_ne!(generate_key(&id), key, "secrets are random");
    }

    #[test]
    fn malformed_keys_are_rejected() {
        let key = generate_key(&generate_id());
        assert_eq!(parse(""), Err(FormatError::Length));
        assert_eq!(parse(&key[1..]), Err(FormatError::Length));
        assert_eq!(parse(&format!("{key}x")), Err(FormatError::Length));
        assert_eq!(
            parse(&key.replacen("tgk_", "tgx_", 1)),
            Err(FormatError::Prefix)
        );
        let mut sep = key.clone().into_bytes();
        sep[PREFIX.len() + ID_LEN] = b'-';
        assert_eq!(
            parse(std::str::from_utf8(&sep).unwrap()),
            Err(FormatError::Character)
        );
        let mut bad = key.clone().into_bytes();
        bad[20] = b'!';
        assert_eq!(
            parse(std::str::from_utf8(&bad).unwrap()),
            Err(FormatError::Character)
        );
        // A one-character change in the secret is caught by the checksum.
        let mut flip = key.clone().into_bytes();
        flip[25] = if flip[25] == b'a' { b'b' } else { b'a' };
        assert_eq!(
            parse(std::str::from_utf8(&flip).unwrap()),
            Err(FormatError::Checksum)
        );
        // Multi-byte UTF-8 of the right byte length is not base62.
        let mut utf = "é".to_string();
        utf.push_str(&key[2..]);
        assert!(parse(&utf).is_err());
    }

    #[test]
    fn no_single_character_change_of_a_key_parses() {
        for _ in 0..20 {
            let key = generate_key(&generate_id());
            let mut bytes = key.clone().into_bytes();
            for i in PREFIX.len()..KEY_LEN {
                let original = bytes[i];
                for &c in BASE62.iter().chain(b"_") {
                    if c == original {
                        continue;
                    }
                    bytes[i] = c;
                    let changed = std::str::from_utf8(&bytes).unwrap();
                    assert!(parse(changed).is_err(), "{key} -> {changed}");
                }
                bytes[i] = original;
            }
        }
    }

    #[test]
    fn hashes_round_trip_and_differ_per_key() {
        let id = generate_id();
        let (a, b) = (generate_key(&id), generate_key(&id));
        let (ha, hb) = (KeyHash::of(&a), KeyHash::of(&b));
        assert!(bool::from(
            ha.ct_eq(&KeyHash::from_hex(&ha.to_hex()).unwrap())
        ));
        assert!(!bool::from(ha.ct_eq(&hb)));
        assert!(KeyHash::from_hex("zz").is_none());
    }
}
