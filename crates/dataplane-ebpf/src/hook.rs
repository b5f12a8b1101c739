//! Where each program runs (its own module: the loader attaches by it, and `loopback.rs`,
//! `live.rs`, `test_run.rs` name programs by it without importing the loader).

use aya::programs::TcAttachType;

/// Where a program runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hook {
    /// TC ingress on a pod's host-side veth: packets leaving the pod (`dp_from_pod`).
    FromPod,
    /// TC egress on a pod's host-side veth: packets to the pod, whichever way they came
    /// (`dp_to_pod`: the pod's ingress NetworkPolicy).
    ToPod,
    /// TC ingress on the uplink: packets from other nodes and the outside (`dp_from_uplink`).
    FromUplink,
    /// TC egress on the uplink: packets the host sends (`dp_to_uplink`).
    ToUplink,
    /// TC egress on `lo`: the host connecting to one of its own addresses at a NodePort (or
    /// a LoadBalancer IP / ExternalIP configured on the node), which never reaches the uplink
    /// (`dp_to_lo`).
    ToLo,
    /// XDP on the uplink, before TC ingress: the NodePort/LoadBalancer fast path
    /// (`dp_xdp_uplink`). Loaded only when [`crate::EbpfConfig::xdp`] is not
    /// [`XdpMode::Off`](crate::XdpMode::Off).
    Xdp,
}

impl Hook {
    pub(crate) fn program(self) -> &'static str {
        match self {
            Hook::FromPod => "dp_from_pod",
            Hook::ToPod => "dp_to_pod",
            Hook::FromUplink => "dp_from_uplink",
            Hook::ToUplink => "dp_to_uplink",
            Hook::ToLo => "dp_to_lo",
            Hook::Xdp => "dp_xdp_uplink",
        }
    }
    pub(crate) fn attach_type(self) -> TcAttachType {
        match self {
            // (XDP is attached by attach_xdp, never as a TC program.)
            Hook::FromPod | Hook::FromUplink | Hook::Xdp => TcAttachType::Ingress,
            Hook::ToPod | Hook::ToUplink | Hook::ToLo => TcAttachType::Egress,
        }
    }
    pub(crate) fn tag(self) -> &'static str {
        match self {
            Hook::FromPod => "from-pod",
            Hook::ToPod => "to-pod",
            Hook::FromUplink => "from-uplink",
            Hook::ToUplink => "to-uplink",
            Hook::ToLo => "to-lo",
            Hook::Xdp => "xdp",
        }
    }
    pub(crate) fn from_tag(tag: &str) -> Option<Self> {
        match tag {
            "from-pod" => Some(Hook::FromPod),
            "to-pod" => Some(Hook::ToPod),
            "from-uplink" => Some(Hook::FromUplink),
            "to-uplink" => Some(Hook::ToUplink),
            "to-lo" => Some(Hook::ToLo),
            "xdp" => Some(Hook::Xdp),
            _ => None,
        }
    }
}
