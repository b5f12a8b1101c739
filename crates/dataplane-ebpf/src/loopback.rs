//! `net.ipv4.conf.lo.accept_local`, which `dp_to_lo`'s connections need.
//!
//! A reply of a connection the host made to one of its own addresses is delivered through
//! lo's ingress once translated back (`to_lo` in `bpf/lib/hook.h`): its source is then that
//! local address, which IPv4 input routing drops as a martian unless the receiving device
//! accepts local sources (the stack's own loopback packets keep their route and are never
//! checked). Cilium sets the same sysctl on `cilium_host` for its replies to the host. IPv6
//! has no such check.
//!
//! We turn it on when `dp_to_lo` is attached and record that we did with a marker directory
//! (bpffs holds no plain files, nor dots in names) under the links directory, so that whichever process detaches
//! `dp_to_lo` (drop, `reset()`) turns it off again, and only then: a value the operator set is
//! left alone.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use crate::error::EbpfError;
use crate::hook::Hook;
use crate::pins::links_dir;

/// Relative to the calling thread's network namespace.
const SYSCTL: &str = "/proc/sys/net/ipv4/conf/lo/accept_local";

fn marker(pin_dir: &Path) -> PathBuf {
    links_dir(pin_dir).join("lo-accept-local")
}

fn error(source: &std::io::Error) -> EbpfError {
    EbpfError::Attach {
        interface: "lo".to_owned(),
        program: Hook::ToLo.program().to_owned(),
        source: format!("net.ipv4.conf.lo.accept_local: {source}").into(),
    }
}

/// Turns `accept_local` on for lo in the calling thread's namespace (no IPv4 there: nothing
/// to do).
pub(crate) fn enable(pin_dir: &Path) -> Result<(), EbpfError> {
    let value = match std::fs::read_to_string(SYSCTL) {
        Ok(v) => v,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(error(&e)),
    };
    if value.trim() != "0" {
        return Ok(());
    }
    // Marker first: a crash in between leaves a marker for a value still 0, which a later
    // restore writes again, harmlessly.
    let m = marker(pin_dir);
    crate::pins::create_private_dir(&m)?;
    std::fs::write(SYSCTL, "1").map_err(|e| error(&e))
}

/// Turns `accept_local` off again if [`enable`] turned it on.
pub(crate) fn restore(pin_dir: &Path) -> Result<(), EbpfError> {
    let m = marker(pin_dir);
    if !m.exists() {
        return Ok(());
    }
    match std::fs::write(SYSCTL, "0") {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(error(&e)),
    }
    std::fs::remove_dir(&m).map_err(|source| EbpfError::Pin { path: m, source })
}
