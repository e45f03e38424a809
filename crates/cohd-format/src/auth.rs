//! The authorization-request message, sent as a Hypercore `Extension` message named
//! [`EXTENSION`] on the primary's db core channel.
//!
//! Bytes: `version (u8 = 1) | kind (u8) | request id (varint) | writer key (32 bytes)`.
//! A request carries the key to authorize; a reply echoes the request's id and key, so replies
//! match requests even when several are in flight (the original matched none).

use crate::{varint, Key};

/// Extension name (the original used `co-hyperdrive-auth-1` with another encoding).
pub const EXTENSION: &str = "co-hyperdrive/auth/1";

const VERSION: u8 = 1;

/// What an authorization message says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthKind {
    /// Please make this key a writer.
    Request,
    /// Denied.
    Deny,
    /// Authorized: the record is written (and replicating).
    Allow,
    /// The responder is not a writer and cannot decide.
    CannotDecide,
}

/// One authorization message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthMessage {
    /// Request or reply.
    pub kind: AuthKind,
    /// Chosen by the requester, echoed by replies.
    pub id: u64,
    /// The writer key asked about.
    pub key: Key,
}

/// Why bytes are not an authorization message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthDecodeError {
    /// Too short or truncated.
    #[error("truncated authorization message")]
    Truncated,
    /// A version we do not speak.
    #[error("unsupported authorization message version {0}")]
    Version(u8),
    /// An unknown kind byte.
    #[error("unknown authorization message kind {0}")]
    Kind(u8),
    /// Bytes after the message.
    #[error("trailing bytes after an authorization message")]
    Trailing,
}

impl AuthMessage {
    /// Encodes the message.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + varint::len(self.id) + 32);
        out.push(VERSION);
        out.push(match self.kind {
            AuthKind::Request => 1,
            AuthKind::Deny => 2,
            AuthKind::Allow => 3,
            AuthKind::CannotDecide => 4,
        });
        varint::write(&mut out, self.id);
        out.extend_from_slice(&self.key.0);
        out
    }

    /// Decodes and validates a message.
    pub fn decode(bytes: &[u8]) -> Result<Self, AuthDecodeError> {
        let (&version, rest) = bytes.split_first().ok_or(AuthDecodeError::Truncated)?;
        if version != VERSION {
            return Err(AuthDecodeError::Version(version));
        }
        let (&kind, rest) = rest.split_first().ok_or(AuthDecodeError::Truncated)?;
        let kind = match kind {
            1 => AuthKind::Request,
            2 => AuthKind::Deny,
            3 => AuthKind::Allow,
            4 => AuthKind::CannotDecide,
            k => return Err(AuthDecodeError::Kind(k)),
        };
        let mut pos = 0;
        let id = varint::read(rest, &mut pos).ok_or(AuthDecodeError::Truncated)?;
        let key: [u8; 32] = rest
            .get(pos..pos + 32)
            .and_then(|k| k.try_into().ok())
            .ok_or(AuthDecodeError::Truncated)?;
        if rest.len() != pos + 32 {
            return Err(AuthDecodeError::Trailing);
        }
        Ok(Self {
            kind,
            id,
            key: Key(key),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kind() -> impl Strategy<Value = AuthKind> {
        prop_oneof![
            Just(AuthKind::Request),
            Just(AuthKind::Deny),
            Just(AuthKind::Allow),
            Just(AuthKind::CannotDecide)
        ]
    }

    proptest! {
        #[test]
        fn roundtrip(kind in kind(), id in any::<u64>(), key in any::<[u8; 32]>()) {
            let m = AuthMessage { kind, id, key: Key(key) };
            prop_assert_eq!(AuthMessage::decode(&m.encode()), Ok(m));
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..48)) {
            let _ = AuthMessage::decode(&bytes);
        }
    }

    #[test]
    fn rejects_bad() {
        let m = AuthMessage {
            kind: AuthKind::Allow,
            id: 300,
            key: Key([7; 32]),
        }
        .encode();
        assert_eq!(
            AuthMessage::decode(&m[..m.len() - 1]),
            Err(AuthDecodeError::Truncated)
        );
        let mut long = m.clone();
        long.push(0);
        assert_eq!(AuthMessage::decode(&long), Err(AuthDecodeError::Trailing));
        let mut v = m.clone();
        v[0] = 9;
        assert_eq!(AuthMessage::decode(&v), Err(AuthDecodeError::Version(9)));
        let mut k = m;
        k[1] = 0;
        assert_eq!(AuthMessage::decode(&k), Err(AuthDecodeError::Kind(0)));
        assert_eq!(AuthMessage::decode(&[]), Err(AuthDecodeError::Truncated));
    }
}
