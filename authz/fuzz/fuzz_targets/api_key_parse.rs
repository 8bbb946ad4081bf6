//! Fuzzes API key parsing: any input is either refused or parses into a key whose parts are
//! consistent; parsing never panics; and no single-character change of a valid key parses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_authz::apikey::format::{self, KEY_LEN, PREFIX};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(key) = format::parse(text) else { return };
    assert_eq!(text.len(), KEY_LEN);
    assert!(text.starts_with(PREFIX));
    assert!(format::is_valid_id(key.id()));
    assert_eq!(&text[PREFIX.len()..PREFIX.len() + key.id().len()], key.id());
    // Hashing is deterministic and bound to the whole key.
    assert!(bool::from(key.hash().ct_eq(&format::KeyHash::of(text))));
    // The checksum catches every single-character substitution (a burst shorter than 32 bits).
    let mut bytes = text.as_bytes().to_vec();
    for i in PREFIX.len()..bytes.len() {
        let original = bytes[i];
        bytes[i] = if original == b'Z' { b'Y' } else { b'Z' };
        let changed = std::str::from_utf8(&bytes).expect("ASCII");
        assert!(format::parse(changed).is_err(), "a one-character change was accepted");
        bytes[i] = original;
    }
});
