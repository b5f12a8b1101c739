//! Compute-only costs: control-plane work without a kernel, next to the kernel numbers.

use dataplane::netfilter::{NetfilterConfig, NftablesDataplane};
use dataplane::testing::synthetic;
use dataplane::DesiredState;

use crate::clock::time_median;
use crate::results::ComputeRow;
use crate::states::CONTROL_SERVICES;

/// Pure control-plane work at 10k services x 10 (no kernel): what an agent computes before
/// it programs anything. The criterion benches `core` and `render` measure the same with
/// statistics; these medians of 5 runs put them next to the kernel numbers.
pub fn compute_costs() -> Vec<ComputeRow> {
    let state = synthetic::state(CONTROL_SERVICES, 10);
    let mut changed = state.clone();
    changed.services[CONTROL_SERVICES / 2].backends.pop();
    let nft = NftablesDataplane::new(NetfilterConfig::nftables(None));
    let mut rows = vec![
        ComputeRow {
            what: "validate 10k services x 10".to_owned(),
            median_ms: time_median(5, || {
                dataplane::validate(&state).expect("valid");
            }),
        },
        ComputeRow {
            what: "diff two 10k-service states (one endpoint changed)".to_owned(),
            median_ms: time_median(5, || {
                std::hint::black_box(dataplane::implement::diff(&state, &changed));
            }),
        },
        ComputeRow {
            what: "clone a 10k-service state".to_owned(),
            median_ms: time_median(5, || {
                std::hint::black_box(state.clone());
            }),
        },
        ComputeRow {
            what: "render the nftables full sync of 10k services x 10".to_owned(),
            median_ms: time_median(5, || {
                std::hint::black_box(nft.render(&state).expect("renders"));
            }),
        },
    ];
    rows.extend(iptables_compute(&state));
    let backends: Vec<dataplane::implement::MaglevBackend> = (0..100)
        .map(|i| dataplane::implement::MaglevBackend {
            key: format!("10.244.0.{i}:8080"),
            weight: 1,
        })
        .collect();
    rows.push(ComputeRow {
        what: "Maglev table (16381 entries) for 100 backends".to_owned(),
        median_ms: time_median(5, || {
            std::hint::black_box(
                dataplane::implement::maglev_table(
                    &backends,
                    dataplane::implement::DEFAULT_MAGLEV_TABLE_SIZE,
                )
                .expect("table"),
            );
        }),
    });
    rows
}

fn iptables_compute(state: &DesiredState) -> Vec<ComputeRow> {
    use dataplane::netfilter::{IptablesDataplane, NetfilterConfig};
    // The path the backend runs (its compiler and writer), not a test-only one.
    let dp = IptablesDataplane::new(NetfilterConfig::iptables(None));
    vec![ComputeRow {
        what: "render the iptables-restore input of 10k services x 10".to_owned(),
        median_ms: time_median(5, || {
            std::hint::black_box(dp.render(state, dataplane::IpFamily::V4).expect("renders"));
        }),
    }]
}
