//! Hand-built SCTP frames for the fixtures (the testkit's `eth()` builder knows TCP, UDP and
//! ICMP): its Ethernet and IP headers, the SCTP common header with its `CRC32c` computed by the
//! `crc32c` crate over the whole SCTP packet (RFC 9260 appendix B, stored little endian), and
//! chunks.

pub use dataplane_testkit::packet::{checksum, eth, PacketBuilder};

/// Chunk types (RFC 9260 section 3.2).
pub const INIT: u8 = 1;
pub const INIT_ACK: u8 = 2;
pub const SACK: u8 = 3;
pub const ABORT: u8 = 6;
pub const SHUTDOWN: u8 = 7;
pub const SHUTDOWN_ACK: u8 = 8;
pub const COOKIE_ECHO: u8 = 10;
pub const COOKIE_ACK: u8 = 11;
pub const SHUTDOWN_COMPLETE: u8 = 14;
pub const DATA: u8 = 0;

/// The SCTP packet's offset in a frame built here.
pub fn sctp_offset(frame: &[u8]) -> usize {
    if frame[12] == 0x86 {
        if frame[14 + 6] == 132 {
            14 + 40
        } else {
            14 + 40 + (usize::from(frame[55]) + 1) * 8
        }
    } else {
        14 + usize::from(frame[14] & 0x0f) * 4
    }
}

/// One chunk of `kind` with `body` (padded to 4 bytes): INIT and INIT-ACK get the fixed part
/// (initiate tag `tag`, `a_rwnd`, streams, initial TSN) before `body`.
pub fn chunk(kind: u8, tag: u32, body: &[u8]) -> Vec<u8> {
    let mut value = Vec::new();
    if kind == INIT || kind == INIT_ACK {
        value.extend(tag.to_be_bytes());
        value.extend(65535u32.to_be_bytes());
        value.extend(10u16.to_be_bytes());
        value.extend(10u16.to_be_bytes());
        value.extend(1u32.to_be_bytes());
    }
    value.extend(body);
    let mut c = vec![kind, 0];
    c.extend(u16::try_from(4 + value.len()).unwrap().to_be_bytes());
    c.extend(value);
    while c.len() % 4 != 0 {
        c.push(0);
    }
    c
}

/// The frame `b` describes (addresses, MACs, TTL, IP options: the testkit's builder) carrying
/// SCTP `sport` -> `dport` with verification tag `vtag` and `chunks`, its `CRC32c` right. Built
/// as UDP with the same length and then turned into SCTP: the protocol (and the IPv4 header
/// checksum), the verification tag over UDP's length and checksum, the CRC.
pub fn sctp(b: PacketBuilder, sport: u16, dport: u16, vtag: u32, chunks: &[u8]) -> Vec<u8> {
    let mut body = vec![0; 4];
    body.extend(chunks);
    let mut f = b.udp(sport, dport).payload(&body).build();
    if f[12] == 0x86 {
        if f[14 + 6] == 17 {
            f[14 + 6] = 132;
        } else {
            // Behind one extension header (the DSR destination options).
            f[54] = 132;
        }
    } else {
        let ihl = usize::from(f[14] & 0x0f) * 4;
        f[14 + 9] = 132;
        f[14 + 10..14 + 12].fill(0);
        let c = checksum(&f[14..14 + ihl]);
        f[14 + 10..14 + 12].copy_from_slice(&c.to_be_bytes());
    }
    let o = sctp_offset(&f);
    f[o + 4..o + 8].copy_from_slice(&vtag.to_be_bytes());
    f[o + 8..o + 12].fill(0);
    let crc = crc32c::crc32c(&f[o..]);
    f[o + 8..o + 12].copy_from_slice(&crc.to_le_bytes());
    f
}

/// [`sctp`] from `src` to `dst` with the builder's MACs (`swap`: the other way round).
pub fn frame(
    src: &str,
    dst: &str,
    sport: u16,
    dport: u16,
    vtag: u32,
    chunks: &[u8],
    swap: bool,
) -> Vec<u8> {
    let b = eth().ip(src, dst);
    let b = if swap {
        b.macs([0x02, 0, 0, 0, 0, 0x02], [0x02, 0, 0, 0, 0, 0x01])
    } else {
        b
    };
    sctp(b, sport, dport, vtag, chunks)
}

/// The `CRC32c` field of a frame built here, as the packet holds it (little endian).
pub fn crc_field(frame: &[u8]) -> u32 {
    let o = sctp_offset(frame) + 8;
    u32::from_le_bytes(frame[o..o + 4].try_into().unwrap())
}

/// `frame` with its `CRC32c` field set to `crc`.
pub fn with_crc(frame: &[u8], crc: u32) -> Vec<u8> {
    let mut f = frame.to_vec();
    let o = sctp_offset(&f) + 8;
    f[o..o + 4].copy_from_slice(&crc.to_le_bytes());
    f
}

/// The `CRC32c` of the SCTP packet in `frame` computed afresh (the field taken as 0), and
/// whether the field holds it.
pub fn crc_ok(frame: &[u8]) -> bool {
    let o = sctp_offset(frame);
    let mut sctp = frame[o..].to_vec();
    sctp[8..12].fill(0);
    crc32c::crc32c(&sctp) == crc_field(frame)
}
