//! Maglev consistent hashing (Eisenbud et al., NSDI 2016), with weights.
//!
//! Every node builds the same table from the same backends, so a flow hashes to the same backend
//! whichever node it enters; adding or removing one backend moves few slots. Weights give a
//! backend proportionally more turns while the table is filled.
//!
//! The hash is our own (FNV-1a folded through a SplitMix64 finaliser) rather than
//! `std::hash`, whose output Rust does not promise to keep stable across releases: tables must
//! stay identical across agent versions during an upgrade.

use serde::{Deserialize, Serialize};

/// Default lookup-table size: a prime, as the algorithm requires (the size Cilium uses).
pub const DEFAULT_MAGLEV_TABLE_SIZE: u32 = 16381;

/// One backend as Maglev sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaglevBackend {
    /// Stable identity, e.g. `10.244.1.5:8080`; the permutation derives from it.
    pub key: String,
    /// Relative weight, at least 1.
    pub weight: u16,
}

/// Why a table could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaglevError {
    /// No backends to fill the table with.
    #[error("maglev: no backends")]
    NoBackends,
    /// The size is not a prime number.
    #[error("maglev: table size {size} is not prime")]
    SizeNotPrime {
        /// The size given.
        size: u32,
    },
    /// More backends than slots.
    #[error("maglev: {backends} backends do not fit a table of {size} slots")]
    TooManyBackends {
        /// Number of backends.
        backends: usize,
        /// Table size.
        size: u32,
    },
    /// A backend has weight 0.
    #[error("maglev: backend {key} has weight 0")]
    ZeroWeight {
        /// The backend's key.
        key: String,
    },
}

/// Stable 64-bit hash of `data` with `seed`.
pub fn hash64(data: &[u8], seed: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    splitmix64(h)
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Whether `n` is prime (trial division; table sizes are small).
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let mut d = 3u32;
    while u64::from(d) * u64::from(d) <= u64::from(n) {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

/// Builds a Maglev lookup table of `size` slots; each entry is an index into `backends`.
///
/// The table depends only on the backends' keys, weights and order-independent identity:
/// backends are considered in key order, so callers may pass them in any order.
pub fn maglev_table(backends: &[MaglevBackend], size: u32) -> Result<Vec<u32>, MaglevError> {
    if backends.is_empty() {
        return Err(MaglevError::NoBackends);
    }
    if !is_prime(size) {
        return Err(MaglevError::SizeNotPrime { size });
    }
    if backends.len() > size as usize {
        return Err(MaglevError::TooManyBackends {
            backends: backends.len(),
            size,
        });
    }
    if let Some(b) = backends.iter().find(|b| b.weight == 0) {
        return Err(MaglevError::ZeroWeight { key: b.key.clone() });
    }
    let m = u64::from(size);
    let mut order: Vec<usize> = (0..backends.len()).collect();
    order.sort_by(|&a, &b| backends[a].key.cmp(&backends[b].key));
    let perms: Vec<(u64, u64)> = order
        .iter()
        .map(|&i| {
            let key = backends[i].key.as_bytes();
            let offset = hash64(key, 0x6d61_676c_6576_0001) % m;
            let skip = hash64(key, 0x6d61_676c_6576_0002) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let max_weight = backends
        .iter()
        .map(|b| u64::from(b.weight))
        .max()
        .unwrap_or(1);
    let mut next = vec![0u64; order.len()];
    // Weighted turns: a backend's credit grows by its weight each round and it places one entry
    // per `max_weight` of credit, so shares follow weights without huge rounds.
    let mut credit = vec![0u64; order.len()];
    let mut table = vec![u32::MAX; size as usize];
    let mut filled = 0u64;
    'fill: loop {
        for (pos, &idx) in order.iter().enumerate() {
            credit[pos] += u64::from(backends[idx].weight);
            while credit[pos] >= max_weight {
                credit[pos] -= max_weight;
                let (offset, skip) = perms[pos];
                let mut slot = (offset + next[pos] * skip) % m;
                while table[slot as usize] != u32::MAX {
                    next[pos] += 1;
                    slot = (offset + next[pos] * skip) % m;
                }
                table[slot as usize] = idx as u32;
                next[pos] += 1;
                filled += 1;
                if filled == m {
                    break 'fill;
                }
            }
        }
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn backends(n: usize) -> Vec<MaglevBackend> {
        (0..n)
            .map(|i| MaglevBackend {
                key: format!("10.244.{}.{}:8080", i / 250, i % 250),
                weight: 1,
            })
            .collect()
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(maglev_table(&[], 7), Err(MaglevError::NoBackends));
        assert_eq!(
            maglev_table(&backends(1), 8),
            Err(MaglevError::SizeNotPrime { size: 8 })
        );
        assert!(matches!(
            maglev_table(&backends(11), 7),
            Err(MaglevError::TooManyBackends { .. })
        ));
        let mut b = backends(2);
        b[1].weight = 0;
        assert!(matches!(
            maglev_table(&b, 7),
            Err(MaglevError::ZeroWeight { .. })
        ));
    }

    #[test]
    fn known_primes() {
        assert!(is_prime(DEFAULT_MAGLEV_TABLE_SIZE));
        assert!(is_prime(65537));
        assert!(!is_prime(65535));
        assert!(!is_prime(1));
    }

    #[test]
    fn hash_is_stable() {
        // Golden values live in tests/maglev.rs; here: the seed matters and empty input is the
        // finalised FNV offset basis.
        assert_eq!(hash64(b"", 0), splitmix64(0xcbf2_9ce4_8422_2325));
        assert_ne!(hash64(b"a", 0), hash64(b"a", 1));
    }

    #[test]
    fn weights_are_honoured() {
        let mut b = backends(3);
        b[0].weight = 1;
        b[1].weight = 2;
        b[2].weight = 5;
        let t = maglev_table(&b, DEFAULT_MAGLEV_TABLE_SIZE).unwrap();
        let mut counts = [0f64; 3];
        for &e in &t {
            counts[e as usize] += 1.0;
        }
        let total = f64::from(DEFAULT_MAGLEV_TABLE_SIZE);
        for (i, w) in [1.0, 2.0, 5.0].iter().enumerate() {
            let share = counts[i] / total;
            assert!(
                (share - w / 8.0).abs() < 0.02,
                "backend {i} weight {w}: share {share:.3}, expected {:.3}",
                w / 8.0
            );
        }
    }

    fn changed(a: &[u32], ak: &[MaglevBackend], b: &[u32], bk: &[MaglevBackend]) -> usize {
        a.iter()
            .zip(b)
            .filter(|(x, y)| ak[**x as usize].key != bk[**y as usize].key)
            .count()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn deterministic_and_in_range(n in 1usize..64, seed in any::<u64>()) {
            let mut b = backends(n);
            for (i, be) in b.iter_mut().enumerate() {
                be.weight = (hash64(&i.to_le_bytes(), seed) % 4 + 1) as u16;
            }
            let t1 = maglev_table(&b, 1021).unwrap();
            let mut shuffled = b.clone();
            shuffled.reverse();
            let t2 = maglev_table(&shuffled, 1021).unwrap();
            prop_assert_eq!(t1.len(), 1021);
            prop_assert!(t1.iter().all(|&e| (e as usize) < n));
            // Same backends in another order: same backend (by key) in every slot.
            prop_assert_eq!(changed(&t1, &b, &t2, &shuffled), 0);
            // Every backend gets at least one slot.
            for i in 0..n {
                prop_assert!(t1.contains(&(i as u32)), "backend {} has no slot", i);
            }
        }

        #[test]
        fn minimal_disruption_on_add_and_remove(n in 2usize..40, victim in any::<prop::sample::Index>()) {
            let size = DEFAULT_MAGLEV_TABLE_SIZE;
            let all = backends(n + 1);
            let fewer: Vec<_> = {
                let v = victim.index(n + 1);
                all.iter().enumerate().filter(|(i, _)| *i != v).map(|(_, b)| b.clone()).collect()
            };
            let t_all = maglev_table(&all, size).unwrap();
            let t_fewer = maglev_table(&fewer, size).unwrap();
            let moved = changed(&t_all, &all, &t_fewer, &fewer);
            // Ideal is size/(n+1) (the victim's own slots); Maglev's bound allows a little more.
            let ideal = size as usize / (n + 1);
            prop_assert!(
                moved <= ideal * 2 + size as usize / 50,
                "{} of {} slots moved when one of {} backends changed (ideal {})",
                moved, size, n + 1, ideal
            );
        }
    }
}
