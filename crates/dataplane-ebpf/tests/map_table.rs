//! The map table (`src/map_table.rs`) agrees with the compiled objects: every map it names is
//! in each object that should define it, with the table's key and value sizes; a map whose
//! size no capacity sets has the table's size in the object. Needs no privileges.

use dataplane_ebpf::map_table::{map_table, Defined};
use dataplane_ebpf::{sock_object, tc_host_object, tc_pod_object, xdp_uplink_object};

fn maps_of(object: &[u8]) -> std::collections::HashMap<String, aya_obj::Map> {
    aya_obj::Object::parse(object).expect("object parses").maps
}

#[test]
fn the_table_matches_the_objects() {
    let shared = [
        ("tc_pod.o", maps_of(tc_pod_object())),
        ("tc_host.o", maps_of(tc_host_object())),
        ("xdp_uplink.o", maps_of(xdp_uplink_object())),
        ("sock.o", maps_of(sock_object())),
    ];
    for spec in map_table() {
        for (object, maps) in &shared {
            if spec.defined == Defined::Sock && *object != "sock.o" {
                assert!(
                    !maps.contains_key(spec.name),
                    "{} is only sock.o's, yet {object} defines it",
                    spec.name
                );
                continue;
            }
            let map = maps
                .get(spec.name)
                .unwrap_or_else(|| panic!("{object} defines no map {}", spec.name));
            assert_eq!(
                (map.key_size() as usize, map.value_size() as usize),
                (spec.key_size, spec.value_size),
                "{object}: key/value sizes of {}",
                spec.name
            );
            // maps.h's size is the table's default, also where a capacity resizes the map
            // at load time: the C and Rust defaults agree.
            assert_eq!(
                map.max_entries(),
                spec.default_size,
                "{object}: size of {}",
                spec.name
            );
        }
    }
}
