//! Hyperbee sub-encoder prefixes: a sub named `files` stores key `k` as `files\0k`.

/// The sub Hyperdrive keeps its file entries in.
pub const FILES: &str = "files";

/// Encoded key of `key` inside sub `sub`.
pub fn encode(sub: &str, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(sub.len() + 1 + key.len());
    out.extend_from_slice(sub.as_bytes());
    out.push(0);
    out.extend_from_slice(key);
    out
}

/// The key inside `sub`, or `None` if `encoded` belongs to another sub.
pub fn decode<'a>(sub: &str, encoded: &'a [u8]) -> Option<&'a [u8]> {
    let rest = encoded.strip_prefix(sub.as_bytes())?;
    rest.strip_prefix(&[0u8])
}

/// The exclusive upper bound of every key of `sub` (`sub\x01`).
pub fn end(sub: &str) -> Vec<u8> {
    let mut out = sub.as_bytes().to_vec();
    out.push(1);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_key_matches_formats_doc() {
        assert_eq!(
            hex::encode(encode(FILES, b"/hello.txt")),
            "66696c6573002f68656c6c6f2e747874"
        );
        assert_eq!(decode(FILES, &encode(FILES, b"/x")), Some(&b"/x"[..]));
        assert_eq!(decode(FILES, b"filesx/x"), None);
        assert!(encode(FILES, b"\xff\xff") < end(FILES));
    }
}
