//! The demo's flow log: an event reader on every lab node, opened through
//! [`dataplane::inspect`] before the demo's traffic (as `dpctl flows --follow` would, beside
//! the node's agent), read on a thread per node so that no kernel buffer overflows while the
//! demo runs, and printed as one table at the end.
//!
//! The log is shown, never judged: when events arrive is the kernel's business (a ring
//! buffer, netlink batching), so the demo's checks do not depend on it. A node whose reader
//! cannot open (a backend without an event source) is named with the reason instead.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use dataplane::events::{BoxEventSource, EventOptions, FlowEvent};
use dataplane::{error_chain, DataplaneKind, Options, Selection};

use crate::flows::events_table;

/// How long one wait for events lasts before a reader looks at its stop flag.
const POLL: Duration = Duration::from_millis(100);
/// After the demo's last probe: how long the readers wait for late events before the log is
/// printed (netlink and ring-buffer wake-ups are batched; this is for the log's completeness,
/// not for any check).
const GRACE: Duration = Duration::from_millis(500);

/// Where one node's agent keeps its state, as the agent's flags say.
#[derive(Debug, Clone)]
pub struct NodeState {
    /// The node's name.
    pub node: String,
    /// Its network namespace.
    pub netns: PathBuf,
    /// The agent's `--bpf-pin-dir`.
    pub pin_dir: PathBuf,
    /// The agent's `--nft-table`.
    pub nft_table: String,
    /// The agent's `--iptables-prefix`.
    pub iptables_prefix: String,
}

impl NodeState {
    fn options(&self) -> Options {
        let mut o = Options::in_netns(&self.netns);
        o.ebpf.pin_dir.clone_from(&self.pin_dir);
        o.nftables = o.nftables.with_name(&self.nft_table);
        o.iptables = o.iptables.with_name(&self.iptables_prefix);
        o
    }
}

struct Reader {
    node: String,
    thread: JoinHandle<Read>,
}

/// What a reader collected.
struct Read {
    events: Vec<FlowEvent>,
    lost: u64,
    error: Option<String>,
}

/// The readers of every node.
pub struct FlowLog {
    readers: Vec<Reader>,
    stop: Arc<AtomicBool>,
    /// Nodes without a reader, and why.
    unavailable: Vec<(String, String)>,
}

impl FlowLog {
    /// Opens a reader on every node (new connections and policy verdicts asked for; the
    /// agents decide). Never fails: a node whose reader cannot open is listed at the end.
    pub fn open(kind: DataplaneKind, nodes: &[NodeState]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut log = Self {
            readers: Vec::new(),
            stop: Arc::clone(&stop),
            unavailable: Vec::new(),
        };
        let ask = EventOptions {
            new_connections: true,
            policy_verdicts: true,
        };
        for node in nodes {
            let source = dataplane::inspect(Selection::Only(kind), &node.options())
                .map_err(|e| error_chain(&e))
                .and_then(|i| i.events(&ask).map_err(|e| error_chain(&e)));
            match source {
                Ok(source) => {
                    let stop = Arc::clone(&stop);
                    let spawned = std::thread::Builder::new()
                        .name(format!("flowlog-{}", node.node))
                        .spawn(move || collect(source, &stop));
                    match spawned {
                        Ok(thread) => log.readers.push(Reader {
                            node: node.node.clone(),
                            thread,
                        }),
                        Err(e) => log.unavailable.push((node.node.clone(), e.to_string())),
                    }
                }
                Err(why) => log.unavailable.push((node.node.clone(), why)),
            }
        }
        log
    }

    /// Stops the readers (after a short grace for late events) and prints the log: every
    /// event of every node in time order, then what could not be read.
    pub fn finish(self) {
        if !self.readers.is_empty() {
            std::thread::sleep(GRACE);
        }
        self.stop.store(true, Ordering::Release);
        let mut events = Vec::new();
        let mut notes = Vec::new();
        for reader in self.readers {
            match reader.thread.join() {
                Ok(read) => {
                    events.extend(read.events);
                    if read.lost > 0 {
                        notes.push(format!(
                            "{}: {} events lost (the kernel's buffer was full)",
                            reader.node, read.lost
                        ));
                    }
                    if let Some(e) = read.error {
                        notes.push(format!("{}: the reader failed: {e}", reader.node));
                    }
                }
                Err(_) => notes.push(format!("{}: the reader panicked", reader.node)),
            }
        }
        for (node, why) in self.unavailable {
            notes.push(format!("{node}: no flow events: {why}"));
        }
        events.sort_by_key(|e| e.time);
        println!(
            "\nflow log: what the dataplanes reported while the demo ran (dpctl flows; shown, \
             not judged)"
        );
        if events.is_empty() {
            println!("(no events)");
        } else {
            println!("{}", events_table(&events));
        }
        for note in notes {
            println!("{note}");
        }
    }
}

/// A node's reader thread: reads until told to stop, then takes what is still waiting.
fn collect(mut source: BoxEventSource, stop: &AtomicBool) -> Read {
    let mut read = Read {
        events: Vec::new(),
        lost: 0,
        error: None,
    };
    let result = (|| -> Result<(), dataplane::Error> {
        loop {
            let stopping = stop.load(Ordering::Acquire);
            while source.read(&mut read.events, 1024)? > 0 {}
            if stopping {
                return Ok(());
            }
            source.wait(POLL)?;
        }
    })();
    read.lost = source.lost();
    if let Err(e) = result {
        read.error = Some(error_chain(&e));
    }
    read
}
