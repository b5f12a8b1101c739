//! The deployment under `deploy/` is what it says: every YAML document parses into its
//! Kubernetes type (k8s-openapi, as the API server would decode it) and back without losing a
//! field (k8s-openapi skips unknown fields, so a misspelt one would otherwise pass), the RBAC
//! rules grant exactly get/list/watch on the kinds the agent translates, and in the lease
//! namespace what `--l2-announcements` needs of Leases, the DaemonSet
//! runs the agent with flags it really accepts (`dataplane-agent --help`), and the
//! kustomization and the Containerfile agree with the rest. Needs no root and no cluster.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Container, PodSpec, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// Every `*.yaml` file under `deploy/`, sorted.
fn yaml_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir())
        .expect("deploy/ exists")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    files
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .expect("a file")
        .to_string_lossy()
        .into_owned()
}

/// The documents of a multi-document YAML file, as JSON values.
fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("readable");
    serde_saphyr::from_multiple::<Value>(&text)
        .unwrap_or_else(|e| panic!("{}: not YAML: {e}", path.display()))
}

/// Decodes `doc` as `T` and checks that encoding it again gives the same document: a field
/// the type does not know (a typo, a wrong level of indentation) is dropped by the decoder and
/// shows up here.
fn typed<T>(doc: &Value, what: &str) -> T
where
    T: serde::de::DeserializeOwned + serde::Serialize,
{
    let object: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{what}: does not decode: {e}\n{doc:#}"));
    let again = serde_json::to_value(&object).expect("k8s-openapi types encode");
    assert!(
        &again == doc,
        "{what}: fields lost or changed when decoded (unknown or misplaced fields?)\n\
         written: {doc:#}\nas the API reads it: {again:#}"
    );
    object
}

/// The deployment's objects by kind.
#[derive(Default)]
struct Deployment {
    daemon_sets: Vec<DaemonSet>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    bindings: Vec<ClusterRoleBinding>,
    roles: Vec<Role>,
    role_bindings: Vec<RoleBinding>,
    /// `kustomization.yaml`, kept as a value (it is not an API object).
    kustomization: Option<Value>,
}

fn load() -> Deployment {
    let mut d = Deployment::default();
    let files = yaml_files();
    assert!(
        !files.is_empty(),
        "no YAML under {}",
        deploy_dir().display()
    );
    for path in files {
        for (i, doc) in documents(&path).into_iter().enumerate() {
            let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
            let what = format!("{} document {i} ({kind})", file_name(&path));
            match kind.as_str() {
                "DaemonSet" => d.daemon_sets.push(typed(&doc, &what)),
                "ServiceAccount" => d.service_accounts.push(typed(&doc, &what)),
                "ClusterRole" => d.cluster_roles.push(typed(&doc, &what)),
                "ClusterRoleBinding" => d.bindings.push(typed(&doc, &what)),
                "Role" => d.roles.push(typed(&doc, &what)),
                "RoleBinding" => d.role_bindings.push(typed(&doc, &what)),
                "Kustomization" => {
                    assert!(d.kustomization.is_none(), "{what}: a second kustomization");
                    d.kustomization = Some(doc);
                }
                other => panic!("{what}: unexpected kind {other:?}"),
            }
        }
    }
    d
}

fn the<'a, T>(items: &'a [T], what: &str) -> &'a T {
    assert_eq!(items.len(), 1, "exactly one {what} expected");
    &items[0]
}

fn pod_spec(ds: &DaemonSet) -> &PodSpec {
    ds.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("the DaemonSet has a pod template spec")
}

fn agent_container(ds: &DaemonSet) -> &Container {
    let spec = pod_spec(ds);
    assert_eq!(spec.containers.len(), 1, "one container: the agent");
    &spec.containers[0]
}

#[test]
fn rbac_grants_read_access_to_the_kinds_read_only() {
    let d = load();
    let role = the(&d.cluster_roles, "ClusterRole");
    let rules = role.rules.as_deref().unwrap_or_default();
    let mut granted = BTreeSet::new();
    for (i, rule) in rules.iter().enumerate() {
        let verbs: BTreeSet<&str> = rule.verbs.iter().map(String::as_str).collect();
        assert_eq!(
            verbs,
            BTreeSet::from(["get", "list", "watch"]),
            "rule {i}: read verbs only"
        );
        assert!(
            rule.resource_names.is_none() && rule.non_resource_urls.is_none(),
            "rule {i}: no resourceNames or nonResourceURLs"
        );
        for group in rule.api_groups.as_deref().unwrap_or_default() {
            for resource in rule.resources.as_deref().unwrap_or_default() {
                assert!(
                    granted.insert((group.clone(), resource.clone())),
                    "{group}/{resource} granted twice"
                );
            }
        }
    }
    // Every kind the agent watches, and nothing else.
    let expected: BTreeSet<(String, String)> = dataplane_kube::Kind::ALL
        .into_iter()
        .map(|kind| {
            let group = kind.api_version().rsplit_once('/').map_or("", |(g, _)| g);
            (group.to_owned(), kind.plural().to_owned())
        })
        .collect();
    assert_eq!(granted, expected);

    // The binding gives that role to the service account the DaemonSet runs as.
    let binding = the(&d.bindings, "ClusterRoleBinding");
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(binding.role_ref.api_group, "rbac.authorization.k8s.io");
    assert_eq!(Some(&binding.role_ref.name), role.metadata.name.as_ref());
    let account = the(&d.service_accounts, "ServiceAccount");
    let ds = the(&d.daemon_sets, "DaemonSet");
    assert_eq!(
        pod_spec(ds).service_account_name,
        account.metadata.name,
        "the DaemonSet runs as the deployment's ServiceAccount"
    );
    assert_eq!(account.metadata.namespace, ds.metadata.namespace);
    let subjects = binding.subjects.as_deref().unwrap_or_default();
    assert_eq!(subjects.len(), 1, "one subject: the agent's ServiceAccount");
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(Some(&subjects[0].name), account.metadata.name.as_ref());
    assert_eq!(subjects[0].namespace, account.metadata.namespace);
}

/// `--l2-announcements`: the Leases of the default `--l2-lease-namespace`, read, created and
/// renewed (no delete, no patch: the agent writes whole records with their resourceVersion),
/// granted to the agent's `ServiceAccount` in that namespace only.
#[test]
fn rbac_grants_the_l2_leases_in_their_namespace() {
    use clap::Parser as _;
    let d = load();
    let role = the(&d.roles, "Role");
    let namespace = dataplane_agent::cli::Args::parse_from(["dataplane-agent"]).l2_lease_namespace;
    assert_eq!(role.metadata.namespace.as_deref(), Some(namespace.as_str()));
    let rules = role.rules.as_deref().unwrap_or_default();
    assert_eq!(rules.len(), 1, "one rule: the leases");
    assert_eq!(
        rules[0].api_groups.as_deref(),
        Some(&["coordination.k8s.io".to_owned()][..])
    );
    assert_eq!(
        rules[0].resources.as_deref(),
        Some(&["leases".to_owned()][..])
    );
    let verbs: BTreeSet<&str> = rules[0].verbs.iter().map(String::as_str).collect();
    assert_eq!(
        verbs,
        BTreeSet::from(["get", "list", "watch", "create", "update"])
    );
    assert!(
        rules[0].resource_names.is_none(),
        "lease names follow the Services"
    );
    let binding = the(&d.role_bindings, "RoleBinding");
    assert_eq!(binding.metadata.namespace, role.metadata.namespace);
    assert_eq!(binding.role_ref.kind, "Role");
    assert_eq!(Some(&binding.role_ref.name), role.metadata.name.as_ref());
    let account = the(&d.service_accounts, "ServiceAccount");
    let subjects = binding.subjects.as_deref().unwrap_or_default();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(Some(&subjects[0].name), account.metadata.name.as_ref());
    assert_eq!(subjects[0].namespace, account.metadata.namespace);
}

#[test]
fn daemon_set_runs_a_node_agent_like_kube_proxy() {
    let d = load();
    let ds = the(&d.daemon_sets, "DaemonSet");
    let spec = pod_spec(ds);
    assert_eq!(spec.host_network, Some(true));
    assert_eq!(spec.dns_policy.as_deref(), Some("Default"));
    assert_eq!(
        spec.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    // Tolerates every taint, as kube-proxy does: a toleration with no key and Exists.
    assert!(
        spec.tolerations.iter().flatten().any(|t| t.key.is_none()
            && t.operator.as_deref() == Some("Exists")
            && t.effect.is_none()),
        "no catch-all toleration"
    );
    let selector = ds
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.as_ref())
        .expect("a selector");
    let labels = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.as_ref())
        .expect("template labels");
    for (k, v) in selector {
        assert_eq!(labels.get(k), Some(v), "the selector matches the template");
    }
}

#[test]
fn daemon_set_mounts_bpffs_cgroup_xtables_lock_and_modules() {
    let d = load();
    let ds = the(&d.daemon_sets, "DaemonSet");
    let spec = pod_spec(ds);
    // bpffs: a host path, mounted by an init container with Bidirectional propagation so the
    // mount (and the pins under it) belongs to the host.
    let volume_path = |name: &str| {
        spec.volumes
            .iter()
            .flatten()
            .find(|v| v.name == name)
            .and_then(|v| v.host_path.as_ref())
            .map(|h| h.path.clone())
    };
    let bpf_mount = |c: &Container| {
        c.volume_mounts
            .iter()
            .flatten()
            .find(|m| m.mount_path == "/sys/fs/bpf")
            .cloned()
    };
    let init = spec.init_containers.as_deref().unwrap_or_default();
    let bpffs_init = init
        .iter()
        .find_map(|c| bpf_mount(c).map(|m| (c, m)))
        .expect("an init container mounts /sys/fs/bpf");
    assert_eq!(
        bpffs_init.1.mount_propagation.as_deref(),
        Some("Bidirectional")
    );
    assert_eq!(
        bpffs_init
            .0
            .security_context
            .as_ref()
            .and_then(|s| s.privileged),
        Some(true),
        "Bidirectional propagation needs a privileged container"
    );
    assert!(
        bpffs_init
            .0
            .command
            .iter()
            .flatten()
            .any(|a| a.contains("mount -t bpf bpf /sys/fs/bpf")),
        "the init container mounts bpffs"
    );
    assert_eq!(
        volume_path(&bpffs_init.1.name).as_deref(),
        Some("/sys/fs/bpf")
    );

    let agent = agent_container(ds);
    let agent_bpf = bpf_mount(agent).expect("the agent sees /sys/fs/bpf");
    assert_eq!(volume_path(&agent_bpf.name).as_deref(), Some("/sys/fs/bpf"));
    let has_mount = |host: &str| {
        agent
            .volume_mounts
            .iter()
            .flatten()
            .any(|m| volume_path(&m.name).as_deref() == Some(host))
    };
    for host in ["/sys/fs/cgroup", "/run/xtables.lock", "/lib/modules"] {
        assert!(has_mount(host), "the agent mounts the host's {host}");
    }
}

#[test]
fn daemon_set_passes_the_node_name_and_probes_the_health_port() {
    let d = load();
    let ds = the(&d.daemon_sets, "DaemonSet");
    let agent = agent_container(ds);
    // NODE_NAME from the downward API, passed as --hostname-override.
    let node_name = agent
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "NODE_NAME")
        .and_then(|e| e.value_from.as_ref())
        .and_then(|v| v.field_ref.as_ref())
        .map(|f| f.field_path.as_str());
    assert_eq!(node_name, Some("spec.nodeName"));
    let args = agent.args.as_deref().unwrap_or_default();
    assert!(
        args.iter().any(|a| a == "--hostname-override=$(NODE_NAME)"),
        "{args:?}"
    );

    // Probes on the health port the agent is told to serve.
    let healthz = args
        .iter()
        .find_map(|a| a.strip_prefix("--healthz-bind-address="))
        .expect("--healthz-bind-address is set");
    let port: i32 = healthz
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .expect("address:port");
    assert_eq!(port, 10256, "kube-proxy's health port");
    for (probe, path) in [
        (agent.liveness_probe.as_ref(), "/livez"),
        (agent.readiness_probe.as_ref(), "/healthz"),
    ] {
        let get = probe
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("an HTTP probe on {path}"));
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(get.port, IntOrString::Int(port));
    }
}

/// The long flags a `--help` text offers.
fn flags_in(help: &str) -> BTreeSet<String> {
    help.split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == ']' || c == '=')
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| {
            w.trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
                .to_owned()
        })
        .collect()
}

#[test]
fn daemon_set_flags_are_flags_the_agent_accepts() {
    let out = Command::new(env!("CARGO_BIN_EXE_dataplane-agent"))
        .arg("--help")
        .output()
        .expect("dataplane-agent runs");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "--help fails: {out:?}");
    let accepted = flags_in(&help);
    let d = load();
    let agent = agent_container(the(&d.daemon_sets, "DaemonSet"));
    let args = agent.args.as_deref().unwrap_or_default();
    assert!(!args.is_empty(), "the DaemonSet passes flags");
    for arg in args {
        let flag = arg.split_once('=').map_or(arg.as_str(), |(f, _)| f);
        assert!(
            flag.starts_with("--"),
            "{arg:?}: flags as --name=value, one per item"
        );
        assert!(
            accepted.contains(flag),
            "{flag} is not a flag of dataplane-agent; it accepts {accepted:?}"
        );
    }
    // The placeholders an operator fills in are still placeholders, not guesses.
    for flag in ["--cluster-cidr", "--service-cidr"] {
        let value = args
            .iter()
            .find_map(|a| a.strip_prefix(&format!("{flag}=")))
            .unwrap_or_else(|| panic!("{flag} is set"));
        assert!(value.starts_with('<'), "{flag}={value}: a placeholder");
    }
}

#[test]
fn kustomization_lists_every_manifest() {
    let d = load();
    let k = d.kustomization.expect("kustomization.yaml");
    assert_eq!(k["apiVersion"], "kustomize.config.k8s.io/v1beta1");
    let listed: BTreeSet<String> = k["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| r.as_str().expect("a file name").to_owned())
        .collect();
    let present: BTreeSet<String> = yaml_files()
        .iter()
        .map(|p| file_name(p))
        .filter(|n| n != "kustomization.yaml")
        .collect();
    assert_eq!(listed, present);
    let ds = the(&d.daemon_sets, "DaemonSet");
    assert_eq!(
        k["namespace"].as_str(),
        ds.metadata.namespace.as_deref(),
        "the kustomization keeps the objects' namespace"
    );
}

#[test]
fn containerfile_builds_the_binary_the_daemon_set_runs() {
    let text = std::fs::read_to_string(deploy_dir().join("Containerfile")).expect("Containerfile");
    let d = load();
    let ds = the(&d.daemon_sets, "DaemonSet");
    let command = agent_container(ds)
        .command
        .as_deref()
        .and_then(<[String]>::first)
        .expect("the agent container names its command")
        .clone();
    assert!(
        text.lines()
            .any(|l| l.starts_with("COPY --from=build ") && l.ends_with(&format!(" {command}"))),
        "the image installs {command}"
    );
    assert!(text.contains("cargo build --release --locked -p dataplane-agent"));
    // The build image is the workspace's minimum Rust.
    let workspace =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml"))
            .expect("workspace manifest");
    let rust = workspace
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .map(|v| v.trim_matches('"'))
        .expect("rust-version in the workspace");
    assert!(
        text.contains(&format!("rust:{rust}-bookworm AS build")),
        "the build stage uses rust {rust}"
    );
    let runtime = text
        .lines()
        .rev()
        .find(|l| l.starts_with("FROM "))
        .expect("a runtime stage");
    assert!(runtime.contains("debian:12-slim"), "{runtime}");
    for package in ["iproute2", "nftables", "iptables", "ipset"] {
        assert!(
            text.lines().any(
                |l| l.contains("apt-get install") && l.split_whitespace().any(|w| w == package)
            ),
            "the runtime image installs {package}"
        );
    }
}
