//! The nft spelling of an address family, shared by the renderer and the policy chains (below
//! both, so that neither imports the other for it).

use dataplane_core::IpFamily;

/// `ip` or `ip6`: the payload keyword of family `f`.
pub(super) fn ip_kw(f: IpFamily) -> &'static str {
    match f {
        IpFamily::V4 => "ip",
        IpFamily::V6 => "ip6",
    }
}

/// The nft address type of family `f`.
pub(super) fn addr_type(f: IpFamily) -> &'static str {
    match f {
        IpFamily::V4 => "ipv4_addr",
        IpFamily::V6 => "ipv6_addr",
    }
}
