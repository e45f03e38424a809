//! The secret-stream handshake as JavaScript `@hyperswarm/secret-stream` runs it: Noise XX
//! (`Noise_XX_Ed25519_ChaChaPoly_BLAKE2b`, empty prologue, no payloads) over uint24le frames,
//! then each side sends one 56-byte header frame (a 32-byte stream id and the 24-byte
//! secretstream header), and every later frame is one secretstream message (tag `Message`, no
//! associated data; an empty one is a keepalive).
//!
//! `hypercore_handshake` runs the Noise state machine and the cipher. It panics on a header
//! frame of the wrong size or with the wrong stream id, so both are checked here first.

use blake2::digest::consts::U32;
use blake2::digest::{FixedOutput, Mac, Update};
use blake2::Blake2bMac;
use crypto_secretstream::Tag;
use hypercore_handshake::state_machine::hc_specific::generate_keypair;
use hypercore_handshake::state_machine::{Ready, SecStream};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::framing::{write_frame, FrameReader};
use super::{StreamInfo, TransportError};

/// Bytes secretstream adds to each message: an encrypted tag byte and a 16-byte MAC.
pub const SECRETSTREAM_OVERHEAD: usize = 17;

/// Length of the header frame: stream id and secretstream header.
const HEADER_FRAME_LEN: usize = 56;

/// Largest handshake frame accepted: Noise XX messages without payloads are at most 96 bytes,
/// and `hypercore_handshake` reads payloads into 1 KiB.
const MAX_HANDSHAKE_FRAME: usize = 1024;

/// The two directions of an established secret stream.
pub struct SecretCipher(SecStream<Ready>);

impl std::fmt::Debug for SecretCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretCipher")
    }
}

impl SecretCipher {
    /// Encrypts one message (it grows by [`SECRETSTREAM_OVERHEAD`] bytes).
    pub fn seal(&mut self, plain: &mut Vec<u8>) -> Result<(), TransportError> {
        self.0
            .push(plain, &[], Tag::Message)
            .map_err(|e| TransportError::Protocol(format!("cannot encrypt: {e}")))
    }

    /// Decrypts one message in place.
    pub fn open(&mut self, sealed: &mut Vec<u8>) -> Result<(), TransportError> {
        self.0
            .pull(sealed, &[])
            .map(|_| ())
            .map_err(|_| TransportError::Protocol("a message does not decrypt".into()))
    }
}

fn handshake_err(e: hypercore_handshake::Error) -> TransportError {
    TransportError::Handshake(e.to_string())
}

/// `namespace("hyperswarm/secret-stream", 2)` of hypercore-crypto, keyed-hashed with the
/// handshake hash: the id each side puts in its header frame.
fn stream_id(handshake_hash: &[u8; 64], initiator: bool) -> [u8; 32] {
    let ns = cohd_format::manifest::namespace("hyperswarm/secret-stream", u8::from(!initiator));
    // A 64-byte key is always a valid BLAKE2b key.
    let mut mac =
        <Blake2bMac<U32> as Mac>::new_from_slice(handshake_hash).unwrap_or_else(|_| unreachable!());
    Update::update(&mut mac, &ns);
    mac.finalize_fixed().into()
}

async fn send(wr: &mut (impl AsyncWrite + Unpin), frames: &[&[u8]]) -> Result<(), TransportError> {
    let mut out = Vec::new();
    for f in frames {
        write_frame(&mut out, f);
    }
    wr.write_all(&out).await.map_err(TransportError::Io)
}

/// Runs the handshake on `rd`/`wr` (no timeout here; the caller bounds it).
pub async fn handshake<R, W>(
    rd: &mut FrameReader<R>,
    wr: &mut W,
    initiator: bool,
    max_frame: usize,
) -> Result<(SecretCipher, StreamInfo), TransportError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    rd.set_max_frame(MAX_HANDSHAKE_FRAME);
    let (ready, remote, local) = if initiator {
        let s = SecStream::new_initiator_xx(&[]).map_err(handshake_err)?;
        let local = s.get_local_public_key();
        let (s, m1) = s.write_msg(None).map_err(handshake_err)?;
        send(wr, &[&m1]).await?;
        let m2 = rd.next().await?;
        let (s, _) = s.read_msg(&m2).map_err(handshake_err)?;
        let remote = s.get_remote_static();
        let (s, m3) = s.write_msg().map_err(handshake_err)?;
        let (s, header) = s.write_msg().map_err(handshake_err)?;
        send(wr, &[&m3, &header]).await?;
        (s, remote, local)
    } else {
        let keypair = generate_keypair().map_err(handshake_err)?;
        let s = SecStream::new_responder_xx(&keypair, &[]).map_err(handshake_err)?;
        let local = s.get_local_public_key();
        let m1 = rd.next().await?;
        let (s, _) = s.read_msg(&m1).map_err(handshake_err)?;
        let (s, [m2, _]) = s.write_msg(None).map_err(handshake_err)?;
        send(wr, &[&m2]).await?;
        let m3 = rd.next().await?;
        let (s, _) = s.read_msg(&m3).map_err(handshake_err)?;
        let remote = s.get_remote_static();
        let (s, header) = s.write_msg().map_err(handshake_err)?;
        send(wr, &[&header]).await?;
        (s, remote, local)
    };
    let remote = remote.ok_or_else(|| TransportError::Handshake("no remote key".into()))?;
    let handshake_hash: [u8; 64] = ready
        .handshake_hash()
        .try_into()
        .map_err(|_| TransportError::Handshake("the handshake hash is not 64 bytes".into()))?;
    let header = rd.next().await?;
    if header.len() != HEADER_FRAME_LEN {
        return Err(TransportError::Handshake(format!(
            "the secretstream header is {} bytes, not {HEADER_FRAME_LEN}",
            header.len()
        )));
    }
    if header[..32] != stream_id(&handshake_hash, !initiator) {
        return Err(TransportError::Handshake(
            "the secretstream header has the wrong stream id".into(),
        ));
    }
    let ready = ready.read_msg(&header).map_err(handshake_err)?;
    rd.set_max_frame(max_frame);
    Ok((
        SecretCipher(ready),
        StreamInfo {
            initiator,
            handshake_hash,
            remote_public_key: remote,
            local_public_key: local,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_are_the_javascript_namespaces() {
        // With an all-zero key the MAC differs from the bare namespace; check the namespace
        // itself: JS `crypto.namespace('hyperswarm/secret-stream', 2)`.
        let ns0 = cohd_format::manifest::namespace("hyperswarm/secret-stream", 0);
        let ns1 = cohd_format::manifest::namespace("hyperswarm/secret-stream", 1);
        assert_eq!(&ns0[..4], &[0xa9, 0x31, 0xa0, 0x15]);
        assert_eq!(&ns1[..4], &[0x74, 0x2c, 0x9d, 0x83]);
    }

    #[tokio::test]
    async fn both_sides_agree_and_messages_pass() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let (ar, mut aw) = tokio::io::split(a);
        let (br, mut bw) = tokio::io::split(b);
        let mut ar = FrameReader::new(ar, 1 << 20);
        let mut br = FrameReader::new(br, 1 << 20);
        let (x, y) = tokio::join!(
            handshake(&mut ar, &mut aw, true, 1 << 20),
            handshake(&mut br, &mut bw, false, 1 << 20)
        );
        let ((mut ca, ia), (mut cb, ib)) = (x.unwrap(), y.unwrap());
        assert_eq!(ia.handshake_hash, ib.handshake_hash);
        assert_eq!(ia.remote_public_key, ib.local_public_key);
        assert_eq!(ib.remote_public_key, ia.local_public_key);
        let mut m = b"hello".to_vec();
        ca.seal(&mut m).unwrap();
        assert_eq!(m.len(), 5 + SECRETSTREAM_OVERHEAD);
        cb.open(&mut m).unwrap();
        assert_eq!(m, b"hello");
        // A flipped bit, or a message too short to hold a MAC, is an error, not a panic.
        let mut m = b"x".to_vec();
        ca.seal(&mut m).unwrap();
        m[3] ^= 1;
        assert!(cb.open(&mut m).is_err());
        assert!(cb.open(&mut vec![1, 2, 3]).is_err());
    }
}
