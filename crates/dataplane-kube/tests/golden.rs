//! Golden tests: Kubernetes objects as `kubectl get -o yaml` prints them
//! (`tests/golden/*.yaml`) and their translation (`tests/snapshots/`): the warnings, then
//! the desired state in dataplane-core's file format.
//!
//! Each file is translated for node `node-a` with the settings below (a line
//! `# proxy-name: NAME` in a file sets `Settings::proxy_name`); a file without a Node gets
//! `golden/common/node-a.yaml`. Local pods get interface `veth` + a hash of their name, except
//! pods named `no-veth-*`, for which none is found. Every translation must pass
//! `dataplane_core::validate`, and applying the objects in reverse order must give the same
//! translation.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use dataplane_core::ObjectName;
use dataplane_kube::{parse_manifests, Cluster, Kind, Object, Settings, Translation};

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn settings(text: &str) -> Settings {
    let node = dataplane_core::Node::new("template-name", [])
        .with_cluster_cidrs([
            "10.244.0.0/16".parse().unwrap(),
            "fd00:10:244::/56".parse().unwrap(),
        ])
        .with_service_cidrs([
            "10.96.0.0/16".parse().unwrap(),
            "fd00:10:96::/112".parse().unwrap(),
        ]);
    let mut s = Settings::new("node-a", node);
    s.proxy_name = text
        .lines()
        .find_map(|l| l.strip_prefix("# proxy-name: "))
        .map(|n| n.trim().to_owned());
    s
}

fn resolver(pod: &ObjectName, _ips: &[IpAddr]) -> Option<String> {
    if pod.name.starts_with("no-veth") {
        return None;
    }
    let h = pod.to_string().bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    Some(format!("veth{h:08x}"))
}

fn objects(path: &Path) -> (String, Vec<Object>, Vec<String>) {
    let text = std::fs::read_to_string(path).unwrap();
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let manifests = parse_manifests(&text, &name).unwrap();
    let mut objects = manifests.objects;
    if !objects.iter().any(|o| o.kind() == Kind::Node) {
        let common = golden_dir().join("common/node-a.yaml");
        let node = std::fs::read_to_string(&common).unwrap();
        objects.extend(
            parse_manifests(&node, "common/node-a.yaml")
                .unwrap()
                .objects,
        );
    }
    (text, objects, manifests.skipped)
}

fn translate(text: &str, objects: impl IntoIterator<Item = Object>) -> Translation {
    let mut cluster = Cluster::new(settings(text));
    for o in objects {
        cluster.apply(o).unwrap();
    }
    cluster.translate(&resolver).unwrap()
}

fn render(t: &Translation) -> String {
    let mut out = String::from("# warnings\n");
    for w in &t.warnings {
        writeln!(out, "{w}").unwrap();
    }
    out.push_str("# state\n");
    out.push_str(&dataplane_core::to_yaml(&t.state).unwrap());
    out
}

#[test]
fn golden() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(golden_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 10, "golden files: {files:?}");
    for path in files {
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        let (text, objects, skipped) = objects(&path);
        let t = translate(&text, objects.clone());
        dataplane_core::validate(&t.state).unwrap_or_else(|e| panic!("{stem}: {e}"));
        let reversed = translate(&text, objects.into_iter().rev());
        assert_eq!(
            render(&reversed),
            render(&t),
            "{stem}: order of objects matters"
        );
        let mut out = String::new();
        for s in skipped {
            writeln!(out, "# skipped {s}").unwrap();
        }
        out.push_str(&render(&t));
        insta::assert_snapshot!(stem, out);
    }
}
