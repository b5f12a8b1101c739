//! Maglev: golden values that pin the hash and the tables across versions (every node and every
//! agent version must build the same table, or flows move during an upgrade), plus balance and
//! disruption properties.
//!
//! The golden values were computed with an independent re-implementation (Python) of the
//! documented algorithm: FNV-1a 64 over the key, with the seed xor-ed into the offset basis, then
//! the SplitMix64 finaliser; offset seed `0x6d61_676c_6576_0001`, skip seed `...0002`; backends
//! in key order take weighted turns.

use std::collections::BTreeMap;

use dataplane_core::maglev::{hash64, is_prime};
use dataplane_core::{maglev_table, MaglevBackend, MaglevError, DEFAULT_MAGLEV_TABLE_SIZE};
use proptest::prelude::*;

fn backend(key: &str, weight: u16) -> MaglevBackend {
    MaglevBackend {
        key: key.to_owned(),
        weight,
    }
}

fn equal_backends(n: usize) -> Vec<MaglevBackend> {
    (0..n)
        .map(|i| backend(&format!("10.244.{}.{}:8080", i / 250, i % 250), 1))
        .collect()
}

/// Slots per backend index.
fn counts(table: &[u32]) -> BTreeMap<u32, usize> {
    let mut out = BTreeMap::new();
    for &e in table {
        *out.entry(e).or_default() += 1;
    }
    out
}

#[test]
fn hash_golden_values() {
    assert_eq!(hash64(b"", 0), 0xc381_7c01_6ba4_ff30);
    assert_eq!(hash64(b"a", 0), 0x5f29_c2aa_dd9b_8527);
    assert_eq!(hash64(b"10.244.0.1:8080", 0), 0x809a_85e1_0e77_8ba4);
    assert_eq!(hash64(b"10.244.0.1:8080", 1), 0xcb37_2aaa_64d6_0def);
    assert_eq!(
        hash64(b"10.244.0.1:8080", 0x6d61_676c_6576_0001),
        0x4f1e_b642_11e1_55cd
    );
}

#[test]
fn table_golden_values() {
    // Given out of key order on purpose: entries index the input slice.
    let weighted = [
        backend("10.244.2.1:8080", 2),
        backend("10.244.0.1:8080", 1),
        backend("10.244.1.1:8080", 1),
    ];
    assert_eq!(
        maglev_table(&weighted, 13).unwrap(),
        [0, 0, 0, 0, 2, 2, 2, 1, 0, 0, 0, 1, 1]
    );
    assert_eq!(
        maglev_table(&weighted, 31).unwrap(),
        [
            2, 0, 1, 0, 1, 2, 0, 2, 0, 0, 0, 0, 1, 1, 2, 2, 0, 1, 0, 2, 1, 0, 0, 0, 0, 0, 0, 1, 2,
            2, 1
        ]
    );
    let v6 = [
        backend("[fd00:244::1]:80", 1),
        backend("[fd00:244::2]:80", 3),
    ];
    assert_eq!(maglev_table(&v6, 7).unwrap(), [1, 0, 1, 1, 0, 1, 1]);
    let ten = (1..=10)
        .map(|i| backend(&format!("10.244.0.{i}:8080"), 1))
        .collect::<Vec<_>>();
    let table = maglev_table(&ten, DEFAULT_MAGLEV_TABLE_SIZE).unwrap();
    assert_eq!(
        table[..16],
        [6, 8, 6, 8, 5, 4, 2, 9, 3, 2, 7, 5, 1, 6, 1, 6]
    );
}

#[test]
fn errors_name_the_problem() {
    assert_eq!(maglev_table(&[], 13), Err(MaglevError::NoBackends));
    assert_eq!(
        maglev_table(&equal_backends(2), 15),
        Err(MaglevError::SizeNotPrime { size: 15 })
    );
    assert_eq!(
        maglev_table(&equal_backends(14), 13),
        Err(MaglevError::TooManyBackends {
            backends: 14,
            size: 13
        })
    );
    let mut b = equal_backends(3);
    b[2].weight = 0;
    let err = maglev_table(&b, 13).unwrap_err();
    assert_eq!(
        err,
        MaglevError::ZeroWeight {
            key: "10.244.0.2:8080".into()
        }
    );
    assert_eq!(
        err.to_string(),
        "maglev: backend 10.244.0.2:8080 has weight 0"
    );
    // As many backends as slots is fine: one slot each.
    let full = maglev_table(&equal_backends(13), 13).unwrap();
    assert_eq!(counts(&full).len(), 13);
}

#[test]
fn default_size_is_prime() {
    assert!(is_prime(DEFAULT_MAGLEV_TABLE_SIZE));
    assert_eq!(DEFAULT_MAGLEV_TABLE_SIZE, 16_381);
    for (n, prime) in [
        (0, false),
        (1, false),
        (2, true),
        (3, true),
        (4, false),
        (65_537, true),
    ] {
        assert_eq!(is_prime(n), prime, "{n}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn equal_weights_balance_to_one_slot(n in 1usize..60) {
        let table = maglev_table(&equal_backends(n), 4099).unwrap();
        let c = counts(&table);
        prop_assert_eq!(c.len(), n);
        let (min, max) = (c.values().min().unwrap(), c.values().max().unwrap());
        prop_assert!(max - min <= 1, "{} backends: {} to {} slots", n, min, max);
    }

    #[test]
    fn adding_a_backend_takes_its_share_and_moves_little_else(n in 1usize..40) {
        let size = 4099u32;
        let old = equal_backends(n);
        let mut new = old.clone();
        new.push(backend("10.244.9.9:8080", 1));
        let a = maglev_table(&old, size).unwrap();
        let b = maglev_table(&new, size).unwrap();
        let to_new = b.iter().filter(|&&e| e as usize == n).count();
        let fair = size as usize / (n + 1);
        prop_assert!(to_new.abs_diff(fair) <= 1, "new backend got {} slots, fair {}", to_new, fair);
        // Slots that move between backends that were there before: Maglev keeps them few.
        let reshuffled = a
            .iter()
            .zip(&b)
            .filter(|(x, y)| **y as usize != n && old[**x as usize].key != new[**y as usize].key)
            .count();
        prop_assert!(
            reshuffled <= size as usize / 20,
            "{} slots moved between old backends ({} backends)", reshuffled, n
        );
    }

    #[test]
    fn same_backends_in_any_order_same_table(n in 1usize..30, rotate in 0usize..30) {
        let b = equal_backends(n);
        let mut rotated = b.clone();
        rotated.rotate_left(rotate % n);
        let t1 = maglev_table(&b, 1021).unwrap();
        let t2 = maglev_table(&rotated, 1021).unwrap();
        for (x, y) in t1.iter().zip(&t2) {
            prop_assert_eq!(&b[*x as usize].key, &rotated[*y as usize].key);
        }
    }
}
