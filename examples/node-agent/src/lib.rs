//! `dataplane-agent`: a node agent that keeps this node's dataplane in sync with Kubernetes
//! objects read from the API server or a directory of manifests, a kube-proxy replacement. The binary (`src/main.rs`) parses the command line ([`cli::Args`]) and calls
//! [`run`]; the parts are public so that tests and benchmarks drive them directly:
//!
//! - [`source`]: the events every source sends; [`manifests`]: the manifest directory;
//!   [`kube_source`]: the API server;
//! - [`reconcile`]: the store, the translation and the syncs, timed by [`runner`];
//! - [`interfaces`]: pod interfaces from the routes of the node;
//! - [`health`], [`metrics`]: kube-proxy-compatible health and metrics servers.
#![warn(missing_docs)]

pub mod cli;
pub mod flowlog;
pub mod health;
pub mod heap;
pub mod http;
pub mod interfaces;
pub mod kube_source;
pub mod l2;
pub mod lease;
pub mod leftovers;
pub mod manifests;
pub mod metrics;
pub mod reconcile;
pub mod runner;
pub mod source;

use std::sync::Arc;

use anyhow::Context;
use dataplane::{DataplaneKind, Selection};
use dataplane_kube::Cluster;
use tokio::sync::mpsc;

pub(crate) use dataplane::error_chain;

use crate::cli::Args;
use crate::health::{ServiceHealth, Status};
use crate::interfaces::RouteResolver;
use crate::metrics::Metrics;
use crate::reconcile::{Outputs, Reconciler};

/// How many source events may wait for the loop (a relist of a big cluster is one event per
/// kind; watch events come one by one).
pub const EVENT_QUEUE: usize = 4096;

/// Runs the agent until SIGTERM or SIGINT (or, with `--cleanup`, removes what it installed).
pub async fn run(args: Args) -> anyhow::Result<()> {
    if args.cleanup {
        return cleanup(&args);
    }
    let settings = args.settings()?;
    let options = args.options()?;
    // With `auto`, the kind whose datapath an earlier agent left must be the one to open.
    let leftovers = if args.backend == Selection::Auto {
        leftovers::leftovers(&args)
    } else {
        Vec::new()
    };
    let opened = leftovers::open_checked(args.backend, &leftovers, &options, dataplane::open)
        .context("opening the dataplane")?;
    tracing::info!(dataplane = %opened.kind, reason = %opened.reason, node = %settings.node_name, "dataplane opened");
    let conntrack_capacity =
        (opened.kind == DataplaneKind::Ebpf).then(|| u64::from(options.ebpf.capacities.conntrack));
    let l2 = args.l2_config()?;
    if args.l2_announcements && !opened.dataplane.capabilities().l2_announcements {
        anyhow::bail!(
            "--l2-announcements: the {} dataplane cannot announce Services on L2 \
             (its capabilities say l2_announcements: false)",
            opened.kind
        );
    }

    let metrics = Arc::new(Metrics::new());
    // kube-proxy's health timeout: twice the sync period.
    let status = Arc::new(Status::new(args.sync_period * 2));
    let mut servers = Vec::new();
    if let Some(addr) = args.healthz_bind_address.0 {
        servers.push(
            health::serve_healthz(addr, Arc::clone(&status), Arc::clone(&metrics))
                .with_context(|| format!("serving /healthz on {addr}"))?
                .0,
        );
    }
    if let Some(addr) = args.metrics_bind_address.0 {
        servers.push(
            metrics::serve_metrics(addr, Arc::clone(&metrics))
                .with_context(|| format!("serving /metrics on {addr}"))?
                .0,
        );
    }

    // Opened before the dataplane moves to its thread (`events` is the dataplane's).
    let flow_log = match &args.flow_log {
        Some(output) => {
            let options = dataplane_core::events::EventOptions {
                new_connections: args.flow_log_new_connections,
                policy_verdicts: false,
            };
            flowlog::start(&*opened.dataplane, &options, output, Arc::clone(&metrics))?
        }
        None => None,
    };

    let (tx, rx) = mpsc::channel(EVENT_QUEUE);
    // Kept until the loop ends: dropping the manifest source stops its watch; the API
    // source's task ends by itself once the loop's receiver is gone.
    let mut election = None;
    let source = if let Some(dir) = &args.manifests {
        Source::Manifests(manifests::spawn(dir, tx)?)
    } else {
        let client = kube_source::client(args.kubeconfig.as_deref()).await?;
        election = l2.map(|l2| l2_election(&client, &settings.node_name, l2));
        Source::Api(kube_source::spawn(
            client,
            settings.node_name.clone(),
            settings.proxy_name.clone(),
            tx,
        ))
    };
    let interfaces = Arc::new(RouteResolver::new(settings.node.interfaces.uplink.clone()));
    let mut cluster = Cluster::new(settings);
    cluster.set_l2_announcements(args.l2_mode());
    let reconciler = Reconciler::new(
        cluster,
        opened.dataplane,
        interfaces,
        args.periods(),
        Outputs {
            status: Arc::clone(&status),
            metrics: Arc::clone(&metrics),
            service_health: ServiceHealth::new(Arc::clone(&status)),
            conntrack_capacity,
        },
    )
    .context("starting the dataplane thread")?;
    let reconciler = match election {
        Some(election) => reconciler.with_l2_election(election),
        None => reconciler,
    };
    let result = reconciler.run(rx, shutdown_signal()).await;
    source.stop().await;
    if let Some(flow_log) = flow_log {
        flow_log.stop();
    }
    for server in servers {
        server.abort();
    }
    result
}

/// The per-Service Lease elections of `--l2-announcements` over `client`, for node
/// `node_name`.
fn l2_election(client: &kube::Client, node_name: &str, l2: l2::L2Config) -> reconcile::L2Election {
    let leases = l2::kube_leases(client.clone(), &l2.namespace);
    let (announcer, verdicts) = l2::Announcer::new(leases, node_name, l2.timing);
    reconcile::L2Election {
        elect: Box::new(announcer),
        verdicts,
        selector: l2.selector,
    }
}

/// The running source (held for its lifetime).
#[derive(Debug)]
enum Source {
    Manifests(manifests::ManifestSource),
    Api(tokio::task::JoinHandle<anyhow::Result<()>>),
}

impl Source {
    /// Stops the source; an API source that ended by itself says why.
    async fn stop(self) {
        match self {
            Source::Manifests(watch) => drop(watch),
            Source::Api(task) if task.is_finished() => match task.await {
                Ok(Err(e)) => tracing::error!("the API source failed: {e:#}"),
                Err(e) => tracing::error!(error = %e, "the API source panicked"),
                Ok(Ok(())) => {}
            },
            Source::Api(task) => task.abort(),
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM");
            std::future::pending::<()>().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT"),
    }
}

/// `--cleanup`: opens each kind of dataplane this machine can run with the agent's names and
/// removes everything it installed (kube-proxy's `--cleanup` removes the rules of every
/// mode too). A kind that cannot run here is checked for what it may have left: eBPF pins
/// under `--bpf-pin-dir` remain after any eBPF dataplane, and an nftables table or iptables
/// chains cannot even be looked for without their tool; either way the cleanup fails (exit
/// status non-zero) rather than say "clean" while a datapath may be in place.
pub fn cleanup(args: &Args) -> anyhow::Result<()> {
    let options = args.options()?;
    cleanup_kinds(args, DataplaneKind::usable, |kind| {
        match dataplane::open(Selection::Only(kind), &options) {
            Ok(mut opened) => opened.dataplane.reset().map_err(|e| error_chain(&e)),
            // Pins of another layout version, which this version cannot load (and so not
            // reset): removed without loading anything.
            Err(e) if kind == DataplaneKind::Ebpf && incompatible_pins(&e) => {
                tracing::warn!(error = %error_chain(&e), "removing another version's eBPF pins");
                dataplane::ebpf::remove_pinned(&options.ebpf.pin_dir, options.netns.as_deref())
                    .map_err(|e| error_chain(&e))
            }
            Err(e) => Err(error_chain(&e)),
        }
    })
}

/// Whether `e` is, somewhere in its chain, pins another version left
/// ([`dataplane::ebpf::EbpfError::IncompatiblePins`]).
fn incompatible_pins(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if matches!(
            c.downcast_ref(),
            Some(dataplane::ebpf::EbpfError::IncompatiblePins { .. })
        ) {
            return true;
        }
        cause = c.source();
    }
    false
}

/// [`cleanup`] over `usable` (whether a kind can run here) and `reset` (open the kind and
/// remove its state); tests pass their own.
pub fn cleanup_kinds(
    args: &Args,
    usable: impl Fn(DataplaneKind) -> Result<(), String>,
    reset: impl Fn(DataplaneKind) -> Result<(), String>,
) -> anyhow::Result<()> {
    let mut failed = Vec::new();
    for kind in DataplaneKind::ALL {
        if let Err(reason) = usable(kind) {
            if kind == DataplaneKind::Ebpf {
                // The pins are files: seen whether or not eBPF can run here.
                if let Some(left) = leftovers::ebpf_leftover(&args.bpf_pin_dir) {
                    tracing::error!(dataplane = %kind, %reason, "cannot run here, and {} remain", left.what);
                    failed.push(format!(
                        "{kind}: cannot run here ({reason}), and {} remain: remove them by hand \
                         (rm -r {}) or run --cleanup where eBPF runs",
                        left.what,
                        args.bpf_pin_dir.display()
                    ));
                } else {
                    tracing::info!(dataplane = %kind, %reason, "cannot run here, no pins: nothing to clean up");
                }
            } else {
                tracing::error!(dataplane = %kind, %reason, "cannot run here: cannot check for its rules");
                failed.push(format!(
                    "{kind}: cannot run here ({reason}), so its rules could not be looked for \
                     and may remain"
                ));
            }
            continue;
        }
        match reset(kind) {
            Ok(()) => tracing::info!(dataplane = %kind, "cleaned up"),
            Err(e) => {
                tracing::error!(dataplane = %kind, error = %e, "cleanup failed");
                failed.push(format!("{kind}: {e}"));
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("cleanup failed: {}", failed.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::incompatible_pins;
    use dataplane::ebpf::EbpfError;

    /// `--cleanup` removes another version's pins only when opening failed on them, wherever
    /// in the error chain the refusal is.
    #[test]
    fn incompatible_pins_are_found_in_the_chain() {
        let refused = EbpfError::IncompatiblePins {
            map: "dp_svc".to_owned(),
            pin_dir: "/sys/fs/bpf/dataplane".into(),
            found: "version 9".to_owned(),
            expected: "version 1".to_owned(),
            what_to_do: "run dataplane-agent --cleanup".to_owned(),
        };
        assert!(incompatible_pins(&refused));
        let wrapped = dataplane::OpenError::Failed {
            kind: dataplane::DataplaneKind::Ebpf,
            source: refused.into(),
        };
        assert!(incompatible_pins(&wrapped));
        let other = EbpfError::NotSupported {
            reason: "no BTF".to_owned(),
        };
        assert!(!incompatible_pins(&other));
    }
}
