//! Fuzzes the key parsers (JWK/JWKS, PEM, DER). Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = gateway::keys::parse_jwk_or_jwks(data, "fuzz", None);
    let _ = gateway::keys::keys_from_pem(data, "fuzz", None, None);
    let _ = gateway::keys::der::parse_spki(data);
    let _ = gateway::keys::der::parse_certificate(data);
    let _ = gateway::jwt::json::parse_value(data);
    let _ = gateway::jwt::b64::decode_std_lenient(data);
});
