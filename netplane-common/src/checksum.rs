//! Internet checksum arithmetic (RFC 1071 / RFC 1624), shared by the eBPF
//! programs (incremental updates) and the tests (full computation).

/// Folds a 32-bit one's-complement sum into 16 bits.
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Incremental update of a checksum field when one 16-bit word of the covered
/// data changes from `old` to `new` (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m')).
/// All three values are the big-endian words read as numbers.
#[inline(always)]
pub fn update16(check: u16, old: u16, new: u16) -> u16 {
    let sum = (!check as u32) + (!old as u32) + (new as u32);
    !fold(sum)
}

/// Incremental update when an IPv4 address changes; addresses in
/// `maps::ip_key` form (the octets as they sit in the packet).
#[inline(always)]
pub fn update_addr(check: u16, old: u32, new: u32) -> u16 {
    let (o, n) = (old.to_ne_bytes(), new.to_ne_bytes());
    let mid = update16(
        check,
        u16::from_be_bytes([o[0], o[1]]),
        u16::from_be_bytes([n[0], n[1]]),
    );
    update16(
        mid,
        u16::from_be_bytes([o[2], o[3]]),
        u16::from_be_bytes([n[2], n[3]]),
    )
}

/// Full checksum of `data` (an IPv4 header with its checksum field zeroed, say).
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for pair in &mut chunks {
        sum += u16::from_be_bytes([pair[0], pair[1]]) as u32;
    }
    if let [last] = chunks.remainder() {
        sum += (*last as u32) << 8;
    }
    !fold(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(ttl: u8) -> [u8; 20] {
        let mut h = [
            0x45, 0, 0, 84, 0x12, 0x34, 0x40, 0, ttl, 6, 0, 0, 10, 244, 0, 2, 10, 244, 1, 3,
        ];
        let c = checksum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h
    }

    #[test]
    fn a_valid_header_sums_to_zero() {
        assert_eq!(checksum(&header(64)), 0);
    }

    #[test]
    fn incremental_ttl_update_matches_full_recompute() {
        for ttl in 1..=255u8 {
            let h = header(ttl);
            let check = u16::from_be_bytes([h[10], h[11]]);
            let old = u16::from_be_bytes([ttl, 6]);
            let new = u16::from_be_bytes([ttl - 1, 6]);
            let expected = u16::from_be_bytes({
                let e = header(ttl - 1);
                [e[10], e[11]]
            });
            assert_eq!(update16(check, old, new), expected, "ttl {ttl}");
        }
    }

    #[test]
    fn odd_length_data_pads_with_zero() {
        assert_eq!(checksum(&[0xff]), !0xff00);
    }
}
