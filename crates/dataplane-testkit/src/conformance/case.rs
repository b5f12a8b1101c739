//! The vocabulary a conformance row is written in.

use std::collections::BTreeSet;

use dataplane_core::{Capabilities, IpFamily, Node, Protocol, Service};

use crate::lab::Lab;

/// Who sends the probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// Pod `i` (lab-wide index); the ingress node is its node (so a NodePort row from a pod
    /// addresses the pod's own node).
    Pod(usize),
    /// External client `k` on the underlay.
    External(usize),
    /// Node `n`'s own (host network) namespace.
    Host(usize),
    /// Node `n`'s namespace sending from the row's destination address (a LoadBalancer IP or
    /// ExternalIP), which the runner configures on the node's `lo` for the row: a node that
    /// holds the address locally, whose requests to it loop back with it as their source
    /// (kube-proxy's `allowFromNode` case).
    HostFromFrontend(usize),
}

/// What the probes are sent to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// The service's ClusterIP of the row's family, at the port named `port_name`. External
    /// clients send it through node 0.
    ClusterIp {
        /// Service name (namespace `default`).
        service: String,
        /// Service port name.
        port_name: String,
    },
    /// The service's ClusterIP of the row's family, sent by external clients through `node`
    /// (for other clients the same as [`Destination::ClusterIp`]).
    ClusterIpVia {
        /// Ingress node for external clients.
        node: usize,
        /// Service name (namespace `default`).
        service: String,
        /// Service port name.
        port_name: String,
    },
    /// An address inside the lab's service CIDR of the row's family that no service holds
    /// (the CIDR's last address but one), at port 80; external clients send it through node 0.
    UnallocatedServiceIp,
    /// The service's ClusterIP at a raw port number (for ports the service does not have).
    ClusterIpPort {
        /// Service name.
        service: String,
        /// Destination port.
        port: u16,
    },
    /// Node `node`'s address at the port's NodePort.
    NodePort {
        /// Ingress node.
        node: usize,
        /// Service name.
        service: String,
        /// Service port name.
        port_name: String,
    },
    /// The service's LoadBalancer IP; external clients route it via `node`.
    LoadBalancer {
        /// Ingress node for external clients.
        node: usize,
        /// Service name.
        service: String,
        /// Service port name.
        port_name: String,
    },
    /// The service's ExternalIP; external clients route it via `node`.
    ExternalIp {
        /// Ingress node for external clients.
        node: usize,
        /// Service name.
        service: String,
        /// Service port name.
        port_name: String,
    },
    /// Pod `i`'s own address at the server port (plain routing, no service).
    PodIp(usize),
    /// External client `k`'s address at the server port: traffic leaving the cluster. The
    /// runner starts a server named `external-k` there for the run.
    External(usize),
}

impl Destination {
    /// [`Destination::ClusterIp`].
    pub fn cluster_ip(service: &str, port_name: &str) -> Self {
        Destination::ClusterIp {
            service: service.to_owned(),
            port_name: port_name.to_owned(),
        }
    }

    /// [`Destination::ClusterIpVia`].
    pub fn cluster_ip_via(node: usize, service: &str, port_name: &str) -> Self {
        Destination::ClusterIpVia {
            node,
            service: service.to_owned(),
            port_name: port_name.to_owned(),
        }
    }

    /// [`Destination::NodePort`].
    pub fn node_port(node: usize, service: &str, port_name: &str) -> Self {
        Destination::NodePort {
            node,
            service: service.to_owned(),
            port_name: port_name.to_owned(),
        }
    }

    /// [`Destination::LoadBalancer`].
    pub fn load_balancer(node: usize, service: &str, port_name: &str) -> Self {
        Destination::LoadBalancer {
            node,
            service: service.to_owned(),
            port_name: port_name.to_owned(),
        }
    }

    /// [`Destination::ExternalIp`].
    pub fn external_ip(node: usize, service: &str, port_name: &str) -> Self {
        Destination::ExternalIp {
            node,
            service: service.to_owned(),
            port_name: port_name.to_owned(),
        }
    }

    fn service(&self) -> Option<&str> {
        match self {
            Destination::ClusterIp { service, .. }
            | Destination::ClusterIpVia { service, .. }
            | Destination::ClusterIpPort { service, .. }
            | Destination::NodePort { service, .. }
            | Destination::LoadBalancer { service, .. }
            | Destination::ExternalIp { service, .. } => Some(service),
            Destination::PodIp(_)
            | Destination::External(_)
            | Destination::UnallocatedServiceIp => None,
        }
    }
}

/// What must happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Every probe is answered by one of these pods (lab-wide indices). The reference model's
    /// backend set must be exactly these pods.
    Backends(Vec<usize>),
    /// Every probe is answered by the *same* pod, one of these (session affinity, Maglev).
    /// The reference model's set must be a non-empty subset of these pods.
    SameBackend(Vec<usize>),
    /// Silently dropped: the probe times out.
    Drop,
    /// Rejected: TCP RST or ICMP port unreachable.
    Reject,
    /// Answered by the addressed server itself: the pod of a [`Destination::PodIp`] or the
    /// client of a [`Destination::External`] (no service involved).
    Direct,
}

/// The source address the backend must see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// The client's own address.
    Client,
    /// The ingress node's address of the row's family (masquerade).
    IngressNode,
    /// Not checked.
    Any,
}

/// A backend capability a row needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Requirement {
    /// IPv6 services.
    Ipv6,
    /// UDP services.
    Udp,
    /// TCP services.
    Tcp,
    /// SCTP services.
    Sctp,
    /// Maglev backend selection.
    Maglev,
    /// ClientIP session affinity.
    SessionAffinity,
    /// Direct server return.
    Dsr,
    /// Masquerade of pod traffic leaving the cluster.
    Masquerade,
}

impl Requirement {
    pub(super) fn met_by(self, caps: &Capabilities) -> bool {
        match self {
            Requirement::Ipv6 => caps.ipv6,
            Requirement::Udp => caps.protocols.contains(&Protocol::Udp),
            Requirement::Tcp => caps.protocols.contains(&Protocol::Tcp),
            Requirement::Sctp => caps.protocols.contains(&Protocol::Sctp),
            Requirement::Maglev => caps.maglev,
            Requirement::SessionAffinity => caps.session_affinity,
            Requirement::Dsr => caps.dsr,
            Requirement::Masquerade => caps.masquerade,
        }
    }
}

/// One row of the table.
#[derive(Debug, Clone)]
pub struct Case {
    /// Row name (unique within a table).
    pub name: String,
    /// The services of the row (the same on every node).
    pub setup: fn(&Lab) -> Vec<Service>,
    /// Who sends.
    pub client: Client,
    /// Where to.
    pub destination: Destination,
    /// TCP or UDP.
    pub protocol: Protocol,
    /// Address family of the client, destination and backends.
    pub family: IpFamily,
    /// What must happen.
    pub expect: Expect,
    /// The source the backend must see.
    pub source_seen: Seen,
    /// Capabilities needed beyond the derived ones (a service destination needs its protocol,
    /// and IPv6 when the family is IPv6).
    pub requires: Vec<Requirement>,
    /// A fixed client source port for every probe (TCP probes then close with RST).
    pub client_port: Option<u16>,
    /// A change to every node's settings (masquerade options, default external mode).
    pub node: Option<fn(&mut Node)>,
    /// The name of an earlier row whose probes must have been answered by the same single
    /// backend as this row's (Maglev: the same 5-tuple through another node).
    pub consistent_with: Option<String>,
    /// For a TCP [`Expect::Reject`] row: the refusal must answer the client's first SYN. A
    /// refusal that comes only after a retransmission (TCP: ~1 s) means the first RST or
    /// ICMP error was lost or malformed. The runner counts the client namespace's SYN
    /// retransmissions around the probe ([`crate::probe_refused_at_once`]): a loaded machine
    /// cannot fake those the way it stretches a timing check.
    pub refused_at_once: bool,
    /// For an [`Expect::Backends`] row: probe until every backend of the set has answered
    /// (up to a bound), instead of checking only that each answer is one of them. For rows
    /// whose backends differ in a way one answer cannot show (each on its own target port).
    pub every_backend_answers: bool,
}

impl Case {
    /// A TCP, IPv4 row expecting nothing yet; complete it with the builder methods.
    pub fn new(
        name: &str,
        setup: fn(&Lab) -> Vec<Service>,
        client: Client,
        destination: Destination,
    ) -> Self {
        Case {
            name: name.to_owned(),
            setup,
            client,
            destination,
            protocol: Protocol::Tcp,
            family: IpFamily::V4,
            expect: Expect::Drop,
            source_seen: Seen::Any,
            requires: Vec::new(),
            client_port: None,
            node: None,
            consistent_with: None,
            refused_at_once: false,
            every_backend_answers: false,
        }
    }

    /// Changes every node's settings for this row.
    #[must_use]
    pub fn node(mut self, tweak: fn(&mut Node)) -> Self {
        self.node = Some(tweak);
        self
    }

    /// Sets the protocol.
    #[must_use]
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// Sets the address family.
    #[must_use]
    pub fn family(mut self, family: IpFamily) -> Self {
        self.family = family;
        self
    }

    /// Sets the expectation.
    #[must_use]
    pub fn expect(mut self, expect: Expect) -> Self {
        self.expect = expect;
        self
    }

    /// Sets the source the backend must see.
    #[must_use]
    pub fn seen(mut self, seen: Seen) -> Self {
        self.source_seen = seen;
        self
    }

    /// Adds a requirement.
    #[must_use]
    pub fn requires(mut self, requirement: Requirement) -> Self {
        self.requires.push(requirement);
        self
    }

    /// Fixes the client's source port.
    #[must_use]
    pub fn client_port(mut self, port: u16) -> Self {
        self.client_port = Some(port);
        self
    }

    /// A TCP reject row's refusal must answer the first SYN (see [`Case::refused_at_once`]).
    #[must_use]
    pub fn refused_at_once(mut self) -> Self {
        self.refused_at_once = true;
        self
    }

    /// Every backend of the row's [`Expect::Backends`] set must answer (see
    /// [`Case::every_backend_answers`]).
    #[must_use]
    pub fn every_backend_answers(mut self) -> Self {
        self.every_backend_answers = true;
        self
    }

    /// Requires the same single answering backend as the earlier row `name`.
    #[must_use]
    pub fn consistent_with(mut self, name: &str) -> Self {
        self.consistent_with = Some(name.to_owned());
        self
    }

    /// Explicit and derived requirements.
    pub fn requirements(&self) -> BTreeSet<Requirement> {
        let mut all: BTreeSet<Requirement> = self.requires.iter().copied().collect();
        // An unallocated service address is the dataplane's to drop, like a service's.
        if self.destination.service().is_some()
            || self.destination == Destination::UnallocatedServiceIp
        {
            all.insert(match self.protocol {
                Protocol::Tcp => Requirement::Tcp,
                Protocol::Udp => Requirement::Udp,
                Protocol::Sctp => Requirement::Sctp,
            });
            if self.family == IpFamily::V6 {
                all.insert(Requirement::Ipv6);
            }
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A setup the runner never calls here: requirements come from the row alone.
    fn no_services(_lab: &Lab) -> Vec<Service> {
        Vec::new()
    }

    #[test]
    fn requirements_are_derived() {
        let c = Case::new(
            "x",
            no_services,
            Client::Pod(0),
            Destination::cluster_ip("empty", "udp"),
        )
        .protocol(Protocol::Udp)
        .family(IpFamily::V6)
        .requires(Requirement::Maglev);
        let r = c.requirements();
        assert!(r.contains(&Requirement::Udp));
        assert!(r.contains(&Requirement::Ipv6));
        assert!(r.contains(&Requirement::Maglev));
        let direct = Case::new("y", no_services, Client::Pod(0), Destination::PodIp(1))
            .protocol(Protocol::Udp);
        assert!(direct.requirements().is_empty(), "routing needs no backend");
    }
}
