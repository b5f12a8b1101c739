//! What the iptables renderer and the policy chains share, below both of them: chain and
//! ipset names (a hash of tenant-controlled text), host prefixes, and the chain map type.

use std::collections::BTreeMap;
use std::net::IpAddr;

/// Chains by name and their rules (`-A` lines without the `-A CHAIN`).
pub type Chains = BTreeMap<String, Vec<String>>;

/// Characters of a name hash: 16 base32 characters, 80 bits.
pub const HASH_CHARS: usize = 16;

/// The first 80 bits of SHA-256 of `s` in base32 (16 characters), for short stable chain and
/// ipset names, as kube-proxy names its chains (`KUBE-SVC-` + 16 characters of base32
/// SHA-256; Calico names its ipsets by SHA-224). The hashed text is tenant-controlled (names,
/// labels, selectors): a cryptographic hash keeps a tenant from choosing text whose name
/// collides with another's, and the policy chains and sets check for collisions anyway
/// ([`super::policy::NameCollision`]).
pub(crate) fn hash_name(s: &str) -> String {
    use sha2::{Digest as _, Sha256};
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let digest = Sha256::digest(s.as_bytes());
    let mut bits = u128::from_be_bytes(digest[..16].try_into().unwrap_or([0; 16]));
    let mut out = String::with_capacity(HASH_CHARS);
    for _ in 0..HASH_CHARS {
        out.push(ALPHABET[(bits >> 123) as usize] as char);
        bits <<= 5;
    }
    out
}

pub(crate) fn host(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(_) => format!("{ip}/32"),
        IpAddr::V6(_) => format!("{ip}/128"),
    }
}
