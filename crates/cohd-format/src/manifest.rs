//! Hypercore 11 manifests: what a core's key commits to (its signers, quorum, prologue...),
//! their compact encoding, the key derived from them, what a signer signs, signature
//! checks, and Hyperdrive 13's derived blobs manifest. Written from the JavaScript behaviour
//! of `hypercore/lib/{messages,verifier,caps,multisig}.js` and `hyperdrive/index.js`.
//!
//! A core's key is [`Manifest::hash`] of its manifest, except for "compat" cores (JS
//! `isCompat`): a manifest with exactly one signer whose public key *is* the core key. Those
//! sign the 80-byte [`merkle::signable`]; every other core signs the 112-byte
//! [`tree_signable`] with, as its context, the signer's namespace (version 0) or the manifest
//! hash (version 1 and later).
//!
//! ```text
//! manifest      = uint version, then
//!   version 0:  uint hash(0=blake2b), uint type,
//!                 type 0: fixed32 prologue hash          (no signers, quorum 0)
//!                 type 1: signer                         (quorum 1)
//!                 type 2: uint flags(1=patch), uint quorum, signer[]
//!   version 1+: uint flags(1=patch 2=prologue 4=linked 8=userData), uint hash, uint quorum,
//!               signer[], [prologue], [fixed32[] linked], [buffer userData]
//! signer        = uint signature(0=ed25519), fixed32 namespace, fixed32 publicKey
//! prologue      = fixed32 hash, uint length
//! ```

use crate::compact::{write_buffer, write_uint, Reader, Truncated};
use crate::merkle::{self, write_nodes, Node};

/// BLAKE2b-256 of the concatenation of `parts` (`crypto.hash([...])` in JavaScript).
fn hash(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = blake2b_simd::Params::new().hash_length(32).to_state();
    for p in parts {
        h.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(h.finalize().as_bytes());
    out
}

/// `crypto.namespace(name, n)[index]`: the hash of (the hash of `name`, then `index`).
pub fn namespace(name: &str, index: u8) -> [u8; 32] {
    let ns = hash(&[name.as_bytes()]);
    hash(&[&ns, &[index]])
}

/// `namespace("hypercore", 3)` (JS `caps.MANIFEST`): prefix of the bytes hashed into a
/// manifest's key.
pub const MANIFEST_NAMESPACE: [u8; 32] =
    hex32(b"e64b7108eacce47cfc61ac850568f55f8b15b82ec5ed78c4ec597b036e2a1498");

/// `namespace("hypercore", 4)` (JS `caps.DEFAULT_NAMESPACE`): a signer's namespace when none
/// is given.
pub const DEFAULT_SIGNER_NAMESPACE: [u8; 32] =
    hex32(b"4144eea531e483d54e0c14f4ca68e0644f355343ff6fcb0f005200e12cd747cb");

/// `namespace("hyperdrive", 0)`: mixed into the namespaces of a drive's blobs signers.
pub const BLOBS_NAMESPACE: [u8; 32] =
    hex32(b"f217b747161784b495ceee3c42163b07dd62cb06df26e20e95ba4d438123aeeb");

/// Compile-time hex to bytes, so the namespace constants read as the JS values.
const fn hex32(s: &[u8; 64]) -> [u8; 32] {
    const fn nib(c: u8) -> u8 {
        match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => panic!("not lowercase hex"),
        }
    }
    let mut out = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        out[i] = nib(s[2 * i]) << 4 | nib(s[2 * i + 1]);
        i += 1;
    }
    out
}

/// Why a manifest or a signature blob could not be decoded, or a check could not be made.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// The input ended inside a value, or an array count does not fit the input.
    #[error("manifest: truncated input")]
    Truncated,
    /// Versions above 3 are refused by JavaScript too.
    #[error("manifest: unknown version {0}")]
    UnknownVersion(u64),
    /// A hash id other than 0 (BLAKE2b).
    #[error("manifest: unknown hash id {0}")]
    UnknownHash(u64),
    /// A signature id other than 0 (Ed25519).
    #[error("manifest: unknown signature id {0}")]
    UnknownSignature(u64),
    /// A version 0 layout type other than 0, 1 or 2.
    #[error("manifest: unknown version 0 type {0}")]
    UnknownType(u64),
    /// Flag bits we do not know. JavaScript drops them silently, then keys the core by the
    /// manifest without them; we refuse rather than guess what a newer writer meant.
    #[error("manifest: unknown flags {0:#x}")]
    UnknownFlags(u64),
    /// Bytes left after a complete value.
    #[error("manifest: {0} trailing bytes")]
    TrailingBytes(usize),
    /// A multisignature proof carries a tree patch: verifying it needs the Merkle tree,
    /// which this pure module does not hold.
    #[error("manifest: multisignature patches are not supported")]
    PatchUnsupported,
    /// The key is neither the manifest's hash nor (compat) its single signer's public key.
    #[error("manifest: the key does not match the manifest")]
    KeyMismatch,
    /// Signing with a key that is not one of the manifest's signers.
    #[error("manifest: the key pair is not a declared signer")]
    NotASigner,
    /// Signing for a manifest that needs several signatures.
    #[error("manifest: signing needs a single-signer manifest")]
    NotSingleSigner,
}

impl From<Truncated> for ManifestError {
    fn from(_: Truncated) -> Self {
        ManifestError::Truncated
    }
}

/// The hash a core's Merkle tree uses; JavaScript knows only BLAKE2b.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HashType {
    /// BLAKE2b-256, id 0.
    #[default]
    Blake2b,
}

/// A signer's signature scheme; JavaScript knows only Ed25519.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SignatureType {
    /// Ed25519, id 0.
    #[default]
    Ed25519,
}

/// One key allowed to sign the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signer {
    /// Signature scheme.
    pub signature: SignatureType,
    /// Version 0 signs under it; later versions only hash it into the key.
    pub namespace: [u8; 32],
    /// Ed25519 public key.
    pub public_key: [u8; 32],
}

impl Signer {
    /// An Ed25519 signer in the default namespace (as JS `parseSigner` fills it in).
    pub fn ed25519(public_key: [u8; 32]) -> Self {
        Signer {
            signature: SignatureType::Ed25519,
            namespace: DEFAULT_SIGNER_NAMESPACE,
            public_key,
        }
    }
}

/// Blocks a core starts with, fixed by their tree hash instead of a signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prologue {
    /// Tree hash at `length`.
    pub hash: [u8; 32],
    /// Number of blocks.
    pub length: u64,
}

/// A Hypercore manifest, field for field as JavaScript holds it after decoding.
///
/// Version 0 cannot carry everything: as in JavaScript, [`Manifest::encode`] writes a
/// signer-less manifest with a prologue as the prologue hash alone, and drops the prologue,
/// `linked` and `user_data` otherwise. Decoding what we encode gives the manifest back
/// whenever the manifest is one JavaScript could have decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// 0 to 3 (JavaScript makes 1, or 2 when `linked` or `user_data` is set).
    pub version: u8,
    /// Tree hash.
    pub hash: HashType,
    /// Whether signatures may carry tree patches (multisig cores trailing each other).
    pub allow_patch: bool,
    /// Signatures needed.
    pub quorum: u64,
    /// Keys allowed to sign, in the order signatures name them.
    pub signers: Vec<Signer>,
    /// Blocks fixed by hash.
    pub prologue: Option<Prologue>,
    /// Keys of linked cores (version 2); `Some(empty)` is encoded, as in JavaScript.
    pub linked: Option<Vec<[u8; 32]>>,
    /// Free bytes hashed into the key (version 2).
    pub user_data: Option<Vec<u8>>,
}

const FLAG_PATCH: u64 = 1;
const FLAG_PROLOGUE: u64 = 2;
const FLAG_LINKED: u64 = 4;
const FLAG_USER_DATA: u64 = 8;
const KNOWN_FLAGS: u64 = FLAG_PATCH | FLAG_PROLOGUE | FLAG_LINKED | FLAG_USER_DATA;

/// Bytes of an encoded signer.
const SIGNER_SIZE: usize = 65;

impl Manifest {
    /// The manifest JavaScript gives a core made for one key pair
    /// (`Verifier.defaultSignerManifest`, and what `createManifest` and Corestore 7 produce
    /// from `{ signers: [{ publicKey }] }`).
    pub fn default_signer(public_key: [u8; 32]) -> Self {
        Manifest {
            version: 1,
            hash: HashType::Blake2b,
            allow_patch: false,
            quorum: 1,
            signers: vec![Signer::ed25519(public_key)],
            prologue: None,
            linked: None,
            user_data: None,
        }
    }

    /// The core key: BLAKE2b-256 of [`MANIFEST_NAMESPACE`] then the encoding (JS
    /// `manifestHash`). A compat core's key is its signer's public key instead; see
    /// [`is_compat`].
    pub fn hash(&self) -> [u8; 32] {
        hash(&[&MANIFEST_NAMESPACE, &self.encode()])
    }

    /// The compact encoding, byte for byte what JavaScript writes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + SIGNER_SIZE * self.signers.len());
        self.encode_into(&mut out);
        out
    }

    /// Appends the compact encoding to `out` (manifests sit inside larger messages).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        write_uint(out, u64::from(self.version));
        if self.version == 0 {
            return self.encode_v0(out);
        }
        let flags = (if self.allow_patch { FLAG_PATCH } else { 0 })
            | (if self.prologue.is_some() {
                FLAG_PROLOGUE
            } else {
                0
            })
            | (if self.linked.is_some() {
                FLAG_LINKED
            } else {
                0
            })
            | (if self.user_data.is_some() {
                FLAG_USER_DATA
            } else {
                0
            });
        write_uint(out, flags);
        write_hash(out, self.hash);
        write_uint(out, self.quorum);
        write_signers(out, &self.signers);
        if let Some(p) = &self.prologue {
            out.extend_from_slice(&p.hash);
            write_uint(out, p.length);
        }
        if let Some(linked) = &self.linked {
            write_uint(out, linked.len() as u64);
            for k in linked {
                out.extend_from_slice(k);
            }
        }
        if let Some(d) = &self.user_data {
            write_buffer(out, d);
        }
    }

    fn encode_v0(&self, out: &mut Vec<u8>) {
        write_hash(out, self.hash);
        match (&self.prologue, self.signers.as_slice()) {
            (Some(p), []) => {
                write_uint(out, 0);
                out.extend_from_slice(&p.hash);
            }
            (_, [s]) if self.quorum == 1 && !self.allow_patch => {
                write_uint(out, 1);
                write_signer(out, s);
            }
            _ => {
                write_uint(out, 2);
                write_uint(out, u64::from(self.allow_patch));
                write_uint(out, self.quorum);
                write_signers(out, &self.signers);
            }
        }
    }

    /// Decodes a whole buffer. Stricter than JavaScript in two ways, both refusals rather
    /// than reinterpretations: unknown flag bits and trailing bytes are errors.
    pub fn decode(buf: &[u8]) -> Result<Self, ManifestError> {
        let mut r = Reader::new(buf);
        let m = Self::read(&mut r)?;
        match r.rest().len() {
            0 => Ok(m),
            n => Err(ManifestError::TrailingBytes(n)),
        }
    }

    /// Decodes one manifest from `r`, leaving what follows it.
    pub fn read(r: &mut Reader<'_>) -> Result<Self, ManifestError> {
        let version = r.uint()?;
        if version == 0 {
            return Self::read_v0(r);
        }
        let version = u8::try_from(version)
            .ok()
            .filter(|&v| v <= 3)
            .ok_or(ManifestError::UnknownVersion(version))?;
        let flags = r.uint()?;
        if flags & !KNOWN_FLAGS != 0 {
            return Err(ManifestError::UnknownFlags(flags));
        }
        let hash = read_hash(r)?;
        let quorum = r.uint()?;
        let signers = read_signers(r)?;
        let prologue = if flags & FLAG_PROLOGUE != 0 {
            Some(Prologue {
                hash: r.array()?,
                length: r.uint()?,
            })
        } else {
            None
        };
        let linked = if flags & FLAG_LINKED != 0 {
            let n = r.count(32)?;
            Some((0..n).map(|_| r.array()).collect::<Result<_, _>>()?)
        } else {
            None
        };
        let user_data = if flags & FLAG_USER_DATA != 0 {
            Some(r.buffer()?.to_vec())
        } else {
            None
        };
        Ok(Manifest {
            version,
            hash,
            allow_patch: flags & FLAG_PATCH != 0,
            quorum,
            signers,
            prologue,
            linked,
            user_data,
        })
    }

    fn read_v0(r: &mut Reader<'_>) -> Result<Self, ManifestError> {
        let hash = read_hash(r)?;
        let mut m = Manifest {
            version: 0,
            hash,
            allow_patch: false,
            quorum: 0,
            signers: Vec::new(),
            prologue: None,
            linked: None,
            user_data: None,
        };
        match r.uint()? {
            0 => {
                m.prologue = Some(Prologue {
                    hash: r.array()?,
                    length: 0,
                })
            }
            1 => {
                m.quorum = 1;
                m.signers.push(read_signer(r)?);
            }
            2 => {
                // JavaScript reads only bit 0 here and ignores the rest.
                m.allow_patch = r.uint()? & FLAG_PATCH != 0;
                m.quorum = r.uint()?;
                m.signers = read_signers(r)?;
            }
            t => return Err(ManifestError::UnknownType(t)),
        }
        Ok(m)
    }
}

fn write_hash(out: &mut Vec<u8>, h: HashType) {
    match h {
        HashType::Blake2b => write_uint(out, 0),
    }
}

fn read_hash(r: &mut Reader<'_>) -> Result<HashType, ManifestError> {
    match r.uint()? {
        0 => Ok(HashType::Blake2b),
        n => Err(ManifestError::UnknownHash(n)),
    }
}

fn write_signer(out: &mut Vec<u8>, s: &Signer) {
    match s.signature {
        SignatureType::Ed25519 => write_uint(out, 0),
    }
    out.extend_from_slice(&s.namespace);
    out.extend_from_slice(&s.public_key);
}

fn read_signer(r: &mut Reader<'_>) -> Result<Signer, ManifestError> {
    let signature = match r.uint()? {
        0 => SignatureType::Ed25519,
        n => return Err(ManifestError::UnknownSignature(n)),
    };
    Ok(Signer {
        signature,
        namespace: r.array()?,
        public_key: r.array()?,
    })
}

fn write_signers(out: &mut Vec<u8>, signers: &[Signer]) {
    write_uint(out, signers.len() as u64);
    for s in signers {
        write_signer(out, s);
    }
}

fn read_signers(r: &mut Reader<'_>) -> Result<Vec<Signer>, ManifestError> {
    let n = r.count(SIGNER_SIZE)?;
    (0..n).map(|_| read_signer(r)).collect()
}

/// JS `isCompat`: a core whose key is its single signer's public key. Such a core signs
/// [`merkle::signable`], whatever its manifest's version says.
pub fn is_compat(key: &[u8; 32], manifest: &Manifest) -> bool {
    matches!(manifest.signers.as_slice(), [s] if &s.public_key == key)
}

/// What a manifest core's signer signs (JS `caps.treeSignable`): the tree namespace, a
/// 32-byte context (the signer's namespace for version 0, else the core key), then the tree
/// hash, length and fork.
pub fn tree_signable(
    context: &[u8; 32],
    tree_hash: &[u8; 32],
    length: u64,
    fork: u64,
) -> [u8; 112] {
    let mut out = [0u8; 112];
    out[..32].copy_from_slice(&merkle::TREE_NAMESPACE);
    out[32..64].copy_from_slice(context);
    out[64..96].copy_from_slice(tree_hash);
    out[96..104].copy_from_slice(&length.to_le_bytes());
    out[104..].copy_from_slice(&fork.to_le_bytes());
    out
}

/// One signer's part of a version 1+ multisignature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignatureProof {
    /// Index into the manifest's signers.
    pub signer: u64,
    /// Ed25519 signature.
    pub signature: [u8; 64],
    /// Blocks this signer's tree is behind by (0: signed the tree itself).
    pub patch: u64,
}

/// The signature blob of a version 1+ core (JS `multiSignature`): even a single signer's
/// signature is wrapped in one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultiSignature {
    /// One per signer, quorum first.
    pub proofs: Vec<SignatureProof>,
    /// Tree nodes the patches need, shared between proofs.
    pub patch: Vec<Node>,
}

/// A version 0 proof's patch: an upgrade whose nodes index [`MultiSignatureV0::patch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatchV0 {
    /// First block of the upgrade.
    pub start: u64,
    /// Blocks in the upgrade.
    pub length: u64,
    /// Indexes into the shared node list.
    pub nodes: Vec<u64>,
}

/// One signer's part of a version 0 multisignature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureProofV0 {
    /// Index into the manifest's signers.
    pub signer: u64,
    /// Ed25519 signature.
    pub signature: [u8; 64],
    /// The upgrade this signer's tree needs, if behind.
    pub patch: Option<PatchV0>,
}

/// The multisignature blob of a version 0 core with several signers (JS
/// `multiSignaturev0`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultiSignatureV0 {
    /// One per signer.
    pub proofs: Vec<SignatureProofV0>,
    /// Tree nodes the patches index.
    pub patch: Vec<Node>,
}

fn read_nodes(r: &mut Reader<'_>) -> Result<Vec<Node>, ManifestError> {
    Ok(crate::merkle::read_nodes(r)?)
}

fn finish<T>(r: &Reader<'_>, v: T) -> Result<T, ManifestError> {
    match r.rest().len() {
        0 => Ok(v),
        n => Err(ManifestError::TrailingBytes(n)),
    }
}

impl MultiSignature {
    /// The blob a single signer's signature travels in (what JS `Verifier.sign` returns for
    /// a version 1+ single-signer core).
    pub fn single(signature: [u8; 64]) -> Self {
        MultiSignature {
            proofs: vec![SignatureProof {
                signer: 0,
                signature,
                patch: 0,
            }],
            patch: Vec::new(),
        }
    }

    /// The compact encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + 67 * self.proofs.len());
        write_uint(&mut out, self.proofs.len() as u64);
        for p in &self.proofs {
            write_uint(&mut out, p.signer);
            out.extend_from_slice(&p.signature);
            write_uint(&mut out, p.patch);
        }
        write_nodes(&mut out, &self.patch);
        out
    }

    /// Decodes a whole blob.
    pub fn decode(buf: &[u8]) -> Result<Self, ManifestError> {
        let mut r = Reader::new(buf);
        let n = r.count(66)?;
        let proofs = (0..n)
            .map(|_| {
                Ok(SignatureProof {
                    signer: r.uint()?,
                    signature: r.array()?,
                    patch: r.uint()?,
                })
            })
            .collect::<Result<_, ManifestError>>()?;
        let patch = read_nodes(&mut r)?;
        finish(&r, MultiSignature { proofs, patch })
    }
}

impl MultiSignatureV0 {
    /// The compact encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        write_uint(&mut out, self.proofs.len() as u64);
        for p in &self.proofs {
            write_uint(&mut out, u64::from(p.patch.is_some()));
            write_uint(&mut out, p.signer);
            out.extend_from_slice(&p.signature);
            if let Some(patch) = &p.patch {
                write_uint(&mut out, patch.start);
                write_uint(&mut out, patch.length);
                write_uint(&mut out, patch.nodes.len() as u64);
                for &n in &patch.nodes {
                    write_uint(&mut out, n);
                }
            }
        }
        write_nodes(&mut out, &self.patch);
        out
    }

    /// Decodes a whole blob.
    pub fn decode(buf: &[u8]) -> Result<Self, ManifestError> {
        let mut r = Reader::new(buf);
        let n = r.count(66)?;
        let proofs = (0..n)
            .map(|_| {
                let flags = r.uint()?;
                let signer = r.uint()?;
                let signature = r.array()?;
                let patch = if flags & 1 != 0 {
                    let start = r.uint()?;
                    let length = r.uint()?;
                    let k = r.count(1)?;
                    let nodes = (0..k).map(|_| r.uint()).collect::<Result<_, _>>()?;
                    Some(PatchV0 {
                        start,
                        length,
                        nodes,
                    })
                } else {
                    None
                };
                Ok(SignatureProofV0 {
                    signer,
                    signature,
                    patch,
                })
            })
            .collect::<Result<_, ManifestError>>()?;
        let patch = read_nodes(&mut r)?;
        finish(&r, MultiSignatureV0 { proofs, patch })
    }
}

/// Checks a core's signatures the way JavaScript's `Verifier` does, for a core key and its
/// manifest.
#[derive(Debug, Clone)]
pub struct Verifier {
    key: [u8; 32],
    manifest: Manifest,
    compat: bool,
}

impl Verifier {
    /// A verifier for the core `key` with `manifest`. The key must be the manifest's hash,
    /// or (compat) its single signer's public key.
    pub fn new(key: [u8; 32], manifest: Manifest) -> Result<Self, ManifestError> {
        let compat = is_compat(&key, &manifest);
        if !compat && manifest.hash() != key {
            return Err(ManifestError::KeyMismatch);
        }
        Ok(Verifier {
            key,
            manifest,
            compat,
        })
    }

    /// The core key.
    pub fn key(&self) -> &[u8; 32] {
        &self.key
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Whether the core is a compat core (signs the 80-byte [`merkle::signable`]).
    pub fn is_compat(&self) -> bool {
        self.compat
    }

    /// The version the signing rules follow: compat cores sign as version 0.
    fn version(&self) -> u8 {
        if self.compat {
            0
        } else {
            self.manifest.version
        }
    }

    /// What signer `signer` signs for the tree `tree_hash` of `length` blocks on `fork`:
    /// 80 bytes for compat cores, else 112. `None` if there is no such signer.
    pub fn signable(
        &self,
        signer: usize,
        tree_hash: &[u8; 32],
        length: u64,
        fork: u64,
    ) -> Option<Vec<u8>> {
        let s = self.manifest.signers.get(signer)?;
        Some(if self.compat {
            merkle::signable(tree_hash, length, fork).to_vec()
        } else if self.version() == 0 {
            tree_signable(&s.namespace, tree_hash, length, fork).to_vec()
        } else {
            tree_signable(&self.key, tree_hash, length, fork).to_vec()
        })
    }

    /// Whether `signature` signs the tree `tree_hash` of `length` blocks on `fork` (JS
    /// `Verifier.verify`). Within a prologue no signature is needed: the tree hash must be
    /// the prologue's. `Err` also means "does not verify": the blob is malformed (trailing
    /// bytes included, which JavaScript would ignore), or needs tree patches this pure check
    /// cannot apply.
    pub fn verify(
        &self,
        tree_hash: &[u8; 32],
        length: u64,
        fork: u64,
        signature: &[u8],
    ) -> Result<bool, ManifestError> {
        let m = &self.manifest;
        if self.version() == 0 {
            if self.compat || (!m.allow_patch && m.signers.len() == 1) {
                return Ok(self.verify_one(0, tree_hash, length, fork, signature));
            }
            let v0 = MultiSignatureV0::decode(signature)?;
            let proofs: Vec<SignatureProof> = v0
                .proofs
                .iter()
                .map(|p| SignatureProof {
                    signer: p.signer,
                    signature: p.signature,
                    patch: p.patch.as_ref().map_or(0, |p| p.length),
                })
                .collect();
            return self.verify_multi(&proofs, tree_hash, length, fork);
        }
        if let Some(p) = &m.prologue {
            if length <= p.length {
                return Ok(length == p.length && &p.hash == tree_hash);
            }
        }
        let multi = MultiSignature::decode(signature)?;
        self.verify_multi(&multi.proofs, tree_hash, length, fork)
    }

    fn verify_multi(
        &self,
        proofs: &[SignatureProof],
        tree_hash: &[u8; 32],
        length: u64,
        fork: u64,
    ) -> Result<bool, ManifestError> {
        let m = &self.manifest;
        // `quorum <= proofs.len()` below bounds the loop by the blob's size.
        if m.quorum == 0 || (proofs.len() as u64) < m.quorum {
            return Ok(false);
        }
        let mut tried = vec![false; m.signers.len()];
        for p in &proofs[..m.quorum as usize] {
            // JavaScript ignores patches unless the manifest allows them.
            if p.patch != 0 && m.allow_patch {
                return Err(ManifestError::PatchUnsupported);
            }
            let Some(i) = usize::try_from(p.signer).ok().filter(|&i| i < tried.len()) else {
                return Ok(false);
            };
            if std::mem::replace(&mut tried[i], true)
                || !self.verify_one(i, tree_hash, length, fork, &p.signature)
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn verify_one(
        &self,
        signer: usize,
        tree_hash: &[u8; 32],
        length: u64,
        fork: u64,
        sig: &[u8],
    ) -> bool {
        let (Some(msg), Some(s)) = (
            self.signable(signer, tree_hash, length, fork),
            self.manifest.signers.get(signer),
        ) else {
            return false;
        };
        ed25519_verify(&s.public_key, &msg, sig)
    }

    /// Signs the tree as JavaScript's `Verifier.sign` does for a single-signer core: the
    /// raw signature for version 0 and compat cores, else wrapped in a [`MultiSignature`].
    pub fn sign(
        &self,
        key: &ed25519_dalek::SigningKey,
        tree_hash: &[u8; 32],
        length: u64,
        fork: u64,
    ) -> Result<Vec<u8>, ManifestError> {
        use ed25519_dalek::Signer as _;
        let public = key.verifying_key().to_bytes();
        let i = self
            .manifest
            .signers
            .iter()
            .position(|s| s.public_key == public)
            .ok_or(ManifestError::NotASigner)?;
        if self.manifest.signers.len() != 1 && self.version() != 0 {
            return Err(ManifestError::NotSingleSigner);
        }
        let msg = self
            .signable(i, tree_hash, length, fork)
            .ok_or(ManifestError::NotASigner)?;
        let sig = key.sign(&msg).to_bytes();
        Ok(if self.version() == 0 {
            sig.to_vec()
        } else {
            MultiSignature::single(sig).encode()
        })
    }
}

/// Ed25519 verification as libsodium's `crypto_sign_verify_detached` (what JavaScript uses)
/// decides it: strict, so small-order keys and points are refused.
fn ed25519_verify(public_key: &[u8; 32], msg: &[u8], sig: &[u8]) -> bool {
    let Ok(sig) = ed25519_dalek::Signature::from_slice(sig) else {
        return false;
    };
    ed25519_dalek::VerifyingKey::from_bytes(public_key)
        .is_ok_and(|k| k.verify_strict(msg, &sig).is_ok())
}

/// Hyperdrive 13's blobs manifest for a drive whose db core has `db` as manifest and
/// `db_key` as key (JS `generateContentManifest`): the same signers, each in a namespace
/// derived from the db key, so the blobs key follows from the db manifest and is not stored.
/// `None` for version 0 manifests (their drives store the blobs key in the db header).
pub fn content_manifest(db: &Manifest, db_key: &[u8; 32]) -> Option<Manifest> {
    if db.version < 1 {
        return None;
    }
    Some(Manifest {
        version: db.version,
        hash: HashType::Blake2b,
        allow_patch: db.allow_patch,
        quorum: db.quorum,
        signers: db
            .signers
            .iter()
            .map(|s| Signer {
                namespace: hash(&[&BLOBS_NAMESPACE, db_key, &s.namespace]),
                ..*s
            })
            .collect(),
        prologue: None,
        linked: None,
        user_data: None,
    })
}

/// The blobs core key of a drive with db core `db_key` and manifest `db`, when Hyperdrive 13
/// derives it: not for compat db cores or version 0 manifests (their header holds it).
pub fn content_key(db: &Manifest, db_key: &[u8; 32]) -> Option<[u8; 32]> {
    if is_compat(db_key, db) {
        return None;
    }
    content_manifest(db, db_key).map(|m| m.hash())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key_pair(seed: u8) -> ed25519_dalek::SigningKey {
        ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn namespaces_are_the_javascript_ones() {
        assert_eq!(namespace("hypercore", 0), merkle::TREE_NAMESPACE);
        assert_eq!(namespace("hypercore", 3), MANIFEST_NAMESPACE);
        assert_eq!(namespace("hypercore", 4), DEFAULT_SIGNER_NAMESPACE);
        assert_eq!(namespace("hyperdrive", 0), BLOBS_NAMESPACE);
    }

    #[test]
    fn default_signer_layout() {
        let m = Manifest::default_signer([7; 32]);
        let e = m.encode();
        // version, flags, hash, quorum, signer count, then the signer (type, namespace, key)
        assert_eq!(e.len(), 6 + 64);
        assert_eq!(&e[..6], &[1, 0, 0, 1, 1, 0]);
        assert_eq!(Manifest::decode(&e), Ok(m));
    }

    #[test]
    fn version_0_layouts() {
        let mut m = Manifest::default_signer([7; 32]);
        m.version = 0;
        assert_eq!(&m.encode()[..3], &[0, 0, 1]);
        assert_eq!(Manifest::decode(&m.encode()), Ok(m.clone()));
        m.quorum = 2;
        assert_eq!(&m.encode()[..5], &[0, 0, 2, 0, 2]);
        assert_eq!(Manifest::decode(&m.encode()), Ok(m.clone()));
        m.signers.clear();
        m.quorum = 0;
        m.prologue = Some(Prologue {
            hash: [3; 32],
            length: 0,
        });
        assert_eq!(m.encode().len(), 3 + 32);
        assert_eq!(Manifest::decode(&m.encode()), Ok(m));
    }

    #[test]
    fn refusals() {
        let good = Manifest::default_signer([7; 32]).encode();
        let with = |i: usize, b: u8| {
            let mut e = good.clone();
            e[i] = b;
            Manifest::decode(&e)
        };
        assert_eq!(with(0, 4), Err(ManifestError::UnknownVersion(4)));
        assert_eq!(with(1, 0x10), Err(ManifestError::UnknownFlags(0x10)));
        assert_eq!(with(2, 1), Err(ManifestError::UnknownHash(1)));
        assert_eq!(with(5, 9), Err(ManifestError::UnknownSignature(9)));
        assert_eq!(
            Manifest::decode(&[0, 0, 3]),
            Err(ManifestError::UnknownType(3))
        );
        assert_eq!(Manifest::decode(&good[..40]), Err(ManifestError::Truncated));
        let mut long = good.clone();
        long.push(0);
        assert_eq!(
            Manifest::decode(&long),
            Err(ManifestError::TrailingBytes(1))
        );
        // a huge signer count fails before allocating
        assert_eq!(
            Manifest::decode(&[1, 0, 0, 1, 0xfe, 0xff, 0xff, 0xff, 0x7f]),
            Err(ManifestError::Truncated)
        );
    }

    #[test]
    fn compat_and_keys() {
        let pk = key_pair(1).verifying_key().to_bytes();
        let m = Manifest::default_signer(pk);
        assert!(is_compat(&pk, &m));
        assert!(!is_compat(&m.hash(), &m));
        assert!(Verifier::new(pk, m.clone()).unwrap().is_compat());
        assert!(!Verifier::new(m.hash(), m.clone()).unwrap().is_compat());
        assert_eq!(
            Verifier::new([0; 32], m).unwrap_err(),
            ManifestError::KeyMismatch
        );
    }

    #[test]
    fn sign_then_verify_every_kind() {
        let sk = key_pair(1);
        let pk = sk.verifying_key().to_bytes();
        let tree = [9u8; 32];
        let mut v0 = Manifest::default_signer(pk);
        v0.version = 0;
        v0.signers[0].namespace = [5; 32];
        let cases = [
            Verifier::new(pk, Manifest::default_signer(pk)).unwrap(),
            Verifier::new(v0.hash(), v0).unwrap(),
            {
                let m = Manifest::default_signer(pk);
                Verifier::new(m.hash(), m).unwrap()
            },
        ];
        for v in cases {
            let sig = v.sign(&sk, &tree, 4, 1).unwrap();
            assert_eq!(v.verify(&tree, 4, 1, &sig), Ok(true));
            assert_eq!(v.verify(&tree, 5, 1, &sig), Ok(false));
            assert_eq!(v.verify(&tree, 4, 2, &sig), Ok(false));
            assert_eq!(v.verify(&[8; 32], 4, 1, &sig), Ok(false));
            assert!(!v.verify(&tree, 4, 1, &sig[1..]).unwrap_or(false));
            assert_eq!(
                v.sign(&key_pair(2), &tree, 4, 1),
                Err(ManifestError::NotASigner)
            );
        }
    }

    #[test]
    fn quorum_of_two() {
        let keys = [key_pair(1), key_pair(2), key_pair(3)];
        let mut m = Manifest::default_signer([0; 32]);
        m.signers = keys
            .iter()
            .map(|k| Signer::ed25519(k.verifying_key().to_bytes()))
            .collect();
        m.quorum = 2;
        let v = Verifier::new(m.hash(), m.clone()).unwrap();
        let tree = [1u8; 32];
        let part = |i: usize| {
            use ed25519_dalek::Signer as _;
            let msg = v.signable(i, &tree, 3, 0).unwrap();
            SignatureProof {
                signer: i as u64,
                signature: keys[i].sign(&msg).to_bytes(),
                patch: 0,
            }
        };
        let blob = |proofs: Vec<SignatureProof>| {
            MultiSignature {
                proofs,
                patch: vec![],
            }
            .encode()
        };
        assert_eq!(
            v.verify(&tree, 3, 0, &blob(vec![part(2), part(0)])),
            Ok(true)
        );
        assert_eq!(
            v.verify(&tree, 3, 0, &blob(vec![part(1), part(1)])),
            Ok(false)
        );
        assert_eq!(v.verify(&tree, 3, 0, &blob(vec![part(1)])), Ok(false));
        let mut bad = part(0);
        bad.signer = 7;
        assert_eq!(v.verify(&tree, 3, 0, &blob(vec![part(1), bad])), Ok(false));
        assert_eq!(
            v.sign(&keys[0], &tree, 3, 0),
            Err(ManifestError::NotSingleSigner)
        );
        // patches count only when the manifest allows them, and then we cannot check them
        let mut patched = part(0);
        patched.patch = 1;
        assert_eq!(
            v.verify(&tree, 3, 0, &blob(vec![patched, part(1)])),
            Ok(true)
        );
        let mut m2 = m;
        m2.allow_patch = true;
        let v2 = Verifier::new(m2.hash(), m2).unwrap();
        assert_eq!(
            v2.verify(&tree, 3, 0, &blob(vec![patched, part(1)])),
            Err(ManifestError::PatchUnsupported)
        );
    }

    #[test]
    fn prologue_needs_no_signature() {
        let mut m = Manifest::default_signer([1; 32]);
        m.prologue = Some(Prologue {
            hash: [4; 32],
            length: 10,
        });
        let v = Verifier::new(m.hash(), m).unwrap();
        assert_eq!(v.verify(&[4; 32], 10, 0, &[]), Ok(true));
        assert_eq!(v.verify(&[4; 32], 9, 0, &[]), Ok(false));
        assert_eq!(v.verify(&[5; 32], 10, 0, &[]), Ok(false));
        assert_eq!(
            v.verify(&[4; 32], 11, 0, &[]),
            Err(ManifestError::Truncated)
        );
    }

    #[test]
    fn content_manifest_keeps_all_but_namespaces() {
        let db = Manifest::default_signer([1; 32]);
        let c = content_manifest(&db, &db.hash()).unwrap();
        assert_eq!(c.signers[0].public_key, [1; 32]);
        assert_ne!(c.signers[0].namespace, db.signers[0].namespace);
        assert_eq!(content_key(&db, &db.hash()), Some(c.hash()));
        assert_eq!(content_key(&db, &[1; 32]), None); // compat db core
        let mut v0 = db;
        v0.version = 0;
        assert_eq!(content_manifest(&v0, &v0.hash()), None);
    }

    fn arb_signer() -> impl Strategy<Value = Signer> {
        (any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(|(namespace, public_key)| Signer {
            signature: SignatureType::Ed25519,
            namespace,
            public_key,
        })
    }

    /// Manifests JavaScript could have decoded (version 0 only in its three shapes).
    fn arb_manifest() -> impl Strategy<Value = Manifest> {
        let v1 = (
            1u8..=3,
            any::<bool>(),
            any::<u64>(),
            proptest::collection::vec(arb_signer(), 0..4),
            proptest::option::of((any::<[u8; 32]>(), any::<u64>())),
            proptest::option::of(proptest::collection::vec(any::<[u8; 32]>(), 0..3)),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)),
        )
            .prop_map(
                |(version, allow_patch, quorum, signers, p, linked, user_data)| Manifest {
                    version,
                    hash: HashType::Blake2b,
                    allow_patch,
                    quorum,
                    signers,
                    prologue: p.map(|(hash, length)| Prologue { hash, length }),
                    linked,
                    user_data,
                },
            );
        let v0 = (
            0u8..3,
            any::<bool>(),
            any::<u64>(),
            proptest::collection::vec(arb_signer(), 0..4),
            any::<[u8; 32]>(),
        )
            .prop_map(|(shape, allow_patch, quorum, signers, hash)| {
                let mut m = Manifest {
                    version: 0,
                    hash: HashType::Blake2b,
                    allow_patch: false,
                    quorum: 0,
                    signers: vec![],
                    prologue: None,
                    linked: None,
                    user_data: None,
                };
                match shape {
                    0 => m.prologue = Some(Prologue { hash, length: 0 }),
                    1 => {
                        m.quorum = 1;
                        m.signers = signers[..signers.len().min(1)].to_vec();
                        if m.signers.is_empty() {
                            m.signers.push(Signer::ed25519(hash));
                        }
                    }
                    _ => {
                        m.allow_patch = allow_patch;
                        m.quorum = quorum;
                        m.signers = signers;
                        // the one shape that would be written as type 1
                        if !allow_patch && quorum == 1 && m.signers.len() == 1 {
                            m.quorum = 2;
                        }
                    }
                }
                m
            });
        prop_oneof![v0, v1]
    }

    proptest! {
        #[test]
        fn round_trip(m in arb_manifest()) {
            let e = m.encode();
            prop_assert_eq!(Manifest::decode(&e), Ok(m.clone()));
            prop_assert_eq!(Manifest::decode(&e).unwrap().encode(), e);
        }

        #[test]
        fn never_panics(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(m) = Manifest::decode(&b) {
                // what decodes re-encodes to the same bytes, except for wide uints
                let _ = m.hash();
            }
            let _ = MultiSignature::decode(&b);
            let _ = MultiSignatureV0::decode(&b);
            let mut m = Manifest::default_signer([1; 32]);
            m.quorum = 2;
            m.signers.push(Signer::ed25519([2; 32]));
            let v = Verifier::new(m.hash(), m).unwrap();
            let _ = v.verify(&[0; 32], 1, 0, &b);
        }

        #[test]
        fn damaged_encodings_never_panic(m in arb_manifest(), at in any::<usize>(), byte in any::<u8>(), cut in any::<usize>()) {
            let mut e = m.encode();
            let i = at % e.len();
            e[i] = byte;
            e.truncate(e.len() - cut % (e.len() + 1) / 2);
            if let Ok(d) = Manifest::decode(&e) {
                let _ = d.hash();
                let _ = content_key(&d, &d.hash());
            }
        }

        #[test]
        fn multisig_round_trip(
            proofs in proptest::collection::vec((any::<u64>(), any::<[u8; 32]>(), any::<u64>()), 0..4),
            nodes in proptest::collection::vec((any::<u64>(), any::<u64>(), any::<[u8; 32]>()), 0..4),
            flags in proptest::collection::vec(proptest::option::of((any::<u64>(), any::<u64>(), proptest::collection::vec(any::<u64>(), 0..4))), 0..4),
        ) {
            let patch: Vec<Node> = nodes.iter().map(|&(index, size, hash)| Node { index, size, hash }).collect();
            let sig = |h: [u8; 32]| { let mut s = [0u8; 64]; s[..32].copy_from_slice(&h); s[32..].copy_from_slice(&h); s };
            let v1 = MultiSignature {
                proofs: proofs.iter().map(|&(signer, h, patch)| SignatureProof { signer, signature: sig(h), patch }).collect(),
                patch: patch.clone(),
            };
            prop_assert_eq!(MultiSignature::decode(&v1.encode()), Ok(v1));
            let v0 = MultiSignatureV0 {
                proofs: proofs.iter().zip(&flags).map(|(&(signer, h, _), p)| SignatureProofV0 {
                    signer,
                    signature: sig(h),
                    patch: p.clone().map(|(start, length, nodes)| PatchV0 { start, length, nodes }),
                }).collect(),
                patch,
            };
            prop_assert_eq!(MultiSignatureV0::decode(&v0.encode()), Ok(v0));
        }
    }
}
