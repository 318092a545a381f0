//! PEM (RFC 7468) framing: labelled base64 blocks. Text outside blocks is ignored, as
//! `openssl` writes explanatory text before certificates.

use crate::jwt::b64;

/// One decoded PEM block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PemBlock {
    /// The label, e.g. `PUBLIC KEY`.
    pub label: String,
    /// The decoded DER.
    pub der: Vec<u8>,
}

/// Why PEM text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PemError {
    /// No `-----BEGIN ...-----` line at all.
    #[error("no PEM block found")]
    NoBlocks,
    /// A block without its matching END line.
    #[error("PEM block {0:?} has no matching END line")]
    Unterminated(String),
    /// A body that is not base64.
    #[error("PEM block {0:?} is not valid base64")]
    Base64(String),
}

/// Parses every PEM block in `text`.
pub fn parse(text: &[u8]) -> Result<Vec<PemBlock>, PemError> {
    let text = String::from_utf8_lossy(text);
    let mut out = Vec::new();
    let mut rest: &str = &text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let after = rest.get(start + 11..).unwrap_or_default();
        let Some(label_end) = after.find("-----") else {
            return Err(PemError::Unterminated(String::new()));
        };
        let label = after.get(..label_end).unwrap_or_default().to_owned();
        let body_start = after.get(label_end + 5..).unwrap_or_default();
        let end_marker = format!("-----END {label}-----");
        let Some(body_end) = body_start.find(&end_marker) else {
            return Err(PemError::Unterminated(label));
        };
        let body = body_start.get(..body_end).unwrap_or_default();
        let der = b64::decode_std_lenient(body.as_bytes())
            .map_err(|_| PemError::Base64(label.clone()))?;
        rest = body_start
            .get(body_end + end_marker.len()..)
            .unwrap_or_default();
        out.push(PemBlock { label, der });
    }
    if out.is_empty() {
        return Err(PemError::NoBlocks);
    }
    Ok(out)
}

/// Encodes one PEM block (64-column lines).
pub fn encode(label: &str, der: &[u8]) -> String {
    let b = b64::encode_std(der);
    let mut s = format!("-----BEGIN {label}-----\n");
    let mut line = String::with_capacity(65);
    for c in b.chars() {
        line.push(c);
        if line.len() == 64 {
            s.push_str(&line);
            s.push('\n');
            line.clear();
        }
    }
    if !line.is_empty() {
        s.push_str(&line);
        s.push('\n');
    }
    s.push_str(&format!("-----END {label}-----\n"));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let data: Vec<u8> = (0..200u8).collect();
        let text = format!(
            "junk\n{}\n{}",
            encode("A B", &data),
            encode("C", &[1, 2, 3])
        );
        let blocks = parse(text.as_bytes()).unwrap();
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0].label, "A B");
        assert_eq!(blocks[0].der, data);
        assert_eq!(blocks[1].der, vec![1, 2, 3]);
        assert_eq!(parse(b"nothing"), Err(PemError::NoBlocks));
        assert!(parse(b"-----BEGIN X-----\nAAAA\n").is_err());
        assert!(parse(b"-----BEGIN X-----\n@@@@\n-----END X-----\n").is_err());
        assert!(parse(b"-----BEGIN X").is_err());
    }
}
