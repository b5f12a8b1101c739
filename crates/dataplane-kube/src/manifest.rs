//! Kubernetes YAML as `kubectl get -o yaml` prints it: one or more documents, each an
//! object or a `kind: List` of objects.

use serde_json::Value;

use crate::{Kind, Object};

/// The objects of a manifest text.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Manifests {
    /// The objects of the kinds the translation reads, in document order.
    pub objects: Vec<Object>,
    /// Documents of other kinds (or other API versions), as `"Deployment default/web"`.
    pub skipped: Vec<String>,
}

/// A manifest text that could not be read. Documents are counted from 1; `document` is
/// `"document 2"` or, inside a `kind: List`, `"document 2 items[3]"`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// The text is not YAML.
    #[error("{file}: {message}")]
    Yaml {
        /// The source the text came from.
        file: String,
        /// The YAML parser's message, with its location.
        message: String,
    },
    /// A document is not an object with `apiVersion` and `kind`.
    #[error("{file}: {document}: {message}")]
    Document {
        /// The source the text came from.
        file: String,
        /// Which document.
        document: String,
        /// What is wrong.
        message: String,
    },
    /// A document of one of our kinds does not parse as that kind.
    #[error("{file}: {document}: {kind} {name}: {path}: {message}")]
    Object {
        /// The source the text came from.
        file: String,
        /// Which document.
        document: String,
        /// The object's kind.
        kind: Kind,
        /// The object's `namespace/name` (or name), as far as it could be read.
        name: String,
        /// Where in the object, as a path (`spec.ports[1].port`).
        path: String,
        /// What is wrong there.
        message: String,
    },
}

/// Parses `text`, Kubernetes YAML with one or more documents; `source` names it in errors.
///
/// ```
/// let text = "apiVersion: apps/v1\nkind: Deployment\nmetadata: { name: web, namespace: default }\n\
///             ---\napiVersion: v1\nkind: Namespace\nmetadata: { name: shop }\n";
/// let m = dataplane_kube::parse_manifests(text, "shop.yaml")?;
/// assert_eq!((m.objects.len(), m.skipped.as_slice()), (1, ["Deployment default/web".to_owned()].as_slice()));
///
/// let bad = "apiVersion: v1\nkind: Service\nmetadata: { name: web }\nspec: { ports: [{ port: http }] }\n";
/// let err = dataplane_kube::parse_manifests(bad, "web.yaml").unwrap_err();
/// assert!(err.to_string().starts_with("web.yaml: document 1: Service default/web: spec.ports[0].port: "), "{err}");
/// # Ok::<(), dataplane_kube::ManifestError>(())
/// ```
pub fn parse_manifests(text: &str, source: &str) -> Result<Manifests, ManifestError> {
    // YAML 1.2 booleans, as dataplane-core's own format: `ns: y` stays a string.
    let options = serde_saphyr::options! { strict_booleans: true };
    let documents: Vec<Value> =
        serde_saphyr::from_multiple_with_options(text, options).map_err(|e| {
            ManifestError::Yaml {
                file: source.to_owned(),
                message: one_line(&e.to_string()),
            }
        })?;
    let mut out = Manifests::default();
    for (i, document) in documents.into_iter().enumerate() {
        let at = format!("document {}", i + 1);
        read_document(&document, source, &at, true, &mut out)?;
    }
    Ok(out)
}

/// One document of a manifest text, as [`split_documents`] cuts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ManifestDocument<'a> {
    /// The number of the text's first document in this piece, from 1, as
    /// [`parse_manifests`]'s errors count them.
    pub number: usize,
    /// The line of the text the piece starts on, from 1.
    pub line: usize,
    /// The piece: from its `---` line (when it has one) to the next document's.
    pub text: &'a str,
}

/// Cuts a manifest text into its documents, without parsing them: each piece parses on its
/// own ([`parse_document`]) to what [`parse_manifests`] gives for that document. A watcher of
/// a manifest file can so tell the documents that changed from those that did not (by their
/// text) and parse only those: one edited Service in a file of a hundred costs one document.
///
/// YAML forbids a line that starts with `---` followed by a space, a tab or the line's end
/// anywhere but between documents (a block or quoted scalar cannot hold one: YAML 1.2
/// §9.1.4 "c-forbidden"), so cutting there is exact. A text with a directive (`%YAML`) or a
/// document-end marker (`...`) — where a document may begin without `---` — comes back as one
/// piece. Text before the first `---` that is only blank lines and comments is no document
/// (and no piece).
///
/// ```
/// let text = "# shop\napiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: b}\n";
/// let docs = dataplane_kube::split_documents(text);
/// assert_eq!(docs.iter().map(|d| (d.number, d.line)).collect::<Vec<_>>(), [(1, 1), (2, 5)]);
/// let b = dataplane_kube::parse_document(&docs[1], "shop.yaml")?;
/// assert_eq!(b.objects[0].metadata().name.as_deref(), Some("b"));
/// # Ok::<(), dataplane_kube::ManifestError>(())
/// ```
pub fn split_documents(text: &str) -> Vec<ManifestDocument<'_>> {
    fn is_marker(line: &str, marker: &str) -> bool {
        line.strip_prefix(marker)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n']))
    }
    let whole = || {
        vec![ManifestDocument {
            number: 1,
            line: 1,
            text,
        }]
    };
    // (byte offset, line) of each `---` line.
    let mut starts = Vec::new();
    let mut offset = 0;
    for (index, line) in text.split_inclusive('\n').enumerate() {
        if line.starts_with('%') || is_marker(line, "...") {
            return whole();
        }
        if is_marker(line, "---") {
            starts.push((offset, index + 1));
        }
        offset += line.len();
    }
    let mut out = Vec::with_capacity(starts.len() + 1);
    let first = starts.first().map_or(text.len(), |(o, _)| *o);
    let preamble = &text[..first];
    let mut number = 1;
    if preamble
        .lines()
        .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
    {
        out.push(ManifestDocument {
            number,
            line: 1,
            text: preamble,
        });
        number += 1;
    }
    for (i, &(start, line)) in starts.iter().enumerate() {
        let end = starts.get(i + 1).map_or(text.len(), |(o, _)| *o);
        out.push(ManifestDocument {
            number,
            line,
            text: &text[start..end],
        });
        number += 1;
    }
    out
}

/// Parses one piece of [`split_documents`]; `source` names the whole text in errors, which
/// count documents and lines in the whole text. The same objects, skipped documents and
/// errors as [`parse_manifests`] gives for that document.
pub fn parse_document(
    document: &ManifestDocument<'_>,
    source: &str,
) -> Result<Manifests, ManifestError> {
    let options = serde_saphyr::options! { strict_booleans: true };
    let Ok(documents) = serde_saphyr::from_multiple_with_options::<Value>(document.text, options)
    else {
        // Parsed again with the lines before it blank, so that the parser's message names
        // the line of the whole text (only on this error path).
        let mut padded = "\n".repeat(document.line.saturating_sub(1));
        padded.push_str(document.text);
        let options = serde_saphyr::options! { strict_booleans: true };
        let message = match serde_saphyr::from_multiple_with_options::<Value>(&padded, options) {
            Err(e) => e.to_string(),
            Ok(_) => format!("document {}: not YAML", document.number),
        };
        return Err(ManifestError::Yaml {
            file: source.to_owned(),
            message: one_line(&message),
        });
    };
    let mut out = Manifests::default();
    for (i, value) in documents.into_iter().enumerate() {
        let at = format!("document {}", document.number + i);
        read_document(&value, source, &at, true, &mut out)?;
    }
    Ok(out)
}

/// One object given as JSON (a watch's dynamic object: a custom resource the API serves
/// without a k8s-openapi type), read as [`parse_manifests`] reads a document of its kind, the
/// policy tier objects' rejected fields included. Errors name the source `watch`.
///
/// ```
/// let value = serde_json::json!({
///     "apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy",
///     "metadata": { "name": "all" }, "spec": { "selector": "all()" },
/// });
/// let err = dataplane_kube::parse_value(&value).unwrap_err();
/// assert!(err.to_string().contains("GlobalNetworkPolicy all: spec.selector: "), "{err}");
/// ```
pub fn parse_value(value: &Value) -> Result<Object, ManifestError> {
    let mut out = Manifests::default();
    read_document(value, "watch", "object", false, &mut out)?;
    out.objects.pop().ok_or_else(|| ManifestError::Document {
        file: "watch".to_owned(),
        document: "object".to_owned(),
        message: format!(
            "{} is not a kind the translation reads",
            out.skipped.pop().unwrap_or_default()
        ),
    })
}

fn read_document(
    document: &Value,
    file: &str,
    at: &str,
    list_allowed: bool,
    out: &mut Manifests,
) -> Result<(), ManifestError> {
    let doc_err = |message: &str| ManifestError::Document {
        file: file.to_owned(),
        document: at.to_owned(),
        message: message.to_owned(),
    };
    let map = match document {
        // An empty document (a trailing `---`) holds nothing.
        Value::Null => return Ok(()),
        Value::Object(map) => map,
        _ => return Err(doc_err("not a Kubernetes object (a mapping)")),
    };
    let kind_name = map
        .get("kind")
        .and_then(Value::as_str)
        .ok_or_else(|| doc_err("no kind"))?
        .to_owned();
    let api_version = map
        .get("apiVersion")
        .and_then(Value::as_str)
        .ok_or_else(|| doc_err("no apiVersion"))?
        .to_owned();
    // `kubectl get -o yaml` prints `kind: List`; the API server's own lists are `ServiceList`...
    if list_allowed
        && (kind_name == "List" || kind_name.ends_with("List") && map.contains_key("items"))
    {
        let Some(Value::Array(items)) = map.get("items") else {
            return Err(doc_err("a List without items"));
        };
        for (j, item) in items.iter().enumerate() {
            read_document(item, file, &format!("{at} items[{j}]"), false, out)?;
        }
        return Ok(());
    }
    let display_name = display_name(map);
    let Some(kind) = Kind::from_name(&kind_name).filter(|k| k.api_version() == api_version) else {
        let name = if Kind::from_name(&kind_name).is_some() {
            format!("{kind_name} {display_name} ({api_version})")
        } else {
            format!("{kind_name} {display_name}")
        };
        out.skipped.push(name);
        return Ok(());
    };
    let object = typed(kind, document.clone()).map_err(|e| ManifestError::Object {
        file: file.to_owned(),
        document: at.to_owned(),
        kind,
        name: object_display_name(kind, map),
        path: error_path(kind, document),
        message: one_line(&e.to_string()),
    })?;
    // A policy tier object with a field the model cannot hold fails its text here already
    // (the node agent then keeps the file's previous objects), as the store would refuse it.
    if let Some((field, message)) = crate::tiers::rejection(&object) {
        return Err(ManifestError::Object {
            file: file.to_owned(),
            document: at.to_owned(),
            kind,
            name: object_display_name(kind, map),
            path: field,
            message,
        });
    }
    out.objects.push(object);
    Ok(())
}

fn typed(kind: Kind, value: Value) -> Result<Object, serde_json::Error> {
    use k8s_openapi::api::core::v1 as core;
    Ok(match kind {
        Kind::Service => serde_json::from_value::<core::Service>(value)?.into(),
        Kind::EndpointSlice => {
            serde_json::from_value::<k8s_openapi::api::discovery::v1::EndpointSlice>(value)?.into()
        }
        Kind::NetworkPolicy => {
            serde_json::from_value::<k8s_openapi::api::networking::v1::NetworkPolicy>(value)?.into()
        }
        Kind::Pod => serde_json::from_value::<core::Pod>(value)?.into(),
        Kind::Namespace => serde_json::from_value::<core::Namespace>(value)?.into(),
        Kind::Node => serde_json::from_value::<core::Node>(value)?.into(),
        Kind::AdminNetworkPolicy => {
            serde_json::from_value::<crate::anp::AdminNetworkPolicy>(value)?.into()
        }
        Kind::BaselineAdminNetworkPolicy => {
            serde_json::from_value::<crate::anp::BaselineAdminNetworkPolicy>(value)?.into()
        }
        Kind::HostEndpoint => serde_json::from_value::<crate::calico::HostEndpoint>(value)?.into(),
        Kind::GlobalNetworkPolicy => {
            serde_json::from_value::<crate::calico::GlobalNetworkPolicy>(value)?.into()
        }
        Kind::FelixConfiguration => {
            serde_json::from_value::<crate::calico::FelixConfiguration>(value)?.into()
        }
    })
}

fn meta_str<'a>(map: &'a serde_json::Map<String, Value>, field: &str) -> Option<&'a str> {
    map.get("metadata")?.get(field)?.as_str()
}

/// `namespace/name` or `name` of an object of a kind we do not know.
fn display_name(map: &serde_json::Map<String, Value>) -> String {
    let name = meta_str(map, "name").unwrap_or("(no name)");
    match meta_str(map, "namespace") {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_owned(),
    }
}

/// `namespace/name` (namespace defaulted) or `name`, for one of our kinds.
fn object_display_name(kind: Kind, map: &serde_json::Map<String, Value>) -> String {
    let name = meta_str(map, "name").unwrap_or("(no name)");
    if kind.is_namespaced() {
        let ns = meta_str(map, "namespace").unwrap_or(crate::DEFAULT_NAMESPACE);
        format!("{ns}/{name}")
    } else {
        name.to_owned()
    }
}

/// Where in `value` the typed parse of `kind` fails, as `spec.ports[1].port`.
///
/// `serde_json`'s errors from a `Value` carry no position, but its errors from text carry a
/// line: the value is written out with one scalar per line, each line's path kept, and
/// parsed again from that text (only when the first parse has failed). A missing field is
/// reported at the end of its object, so the path is the object's.
fn error_path(kind: Kind, value: &Value) -> String {
    let mut text = String::new();
    let mut paths = vec![String::new()];
    render(value, "", &mut text, &mut paths);
    let line = match typed_from_text(kind, &text) {
        Err(e) => e.line(),
        Ok(()) => 0,
    };
    match paths.get(line) {
        Some(p) if !p.is_empty() => p.clone(),
        _ => "(object)".to_owned(),
    }
}

fn typed_from_text(kind: Kind, text: &str) -> Result<(), serde_json::Error> {
    use k8s_openapi::api::core::v1 as core;
    match kind {
        Kind::Service => serde_json::from_str::<core::Service>(text).map(drop),
        Kind::EndpointSlice => {
            serde_json::from_str::<k8s_openapi::api::discovery::v1::EndpointSlice>(text).map(drop)
        }
        Kind::NetworkPolicy => {
            serde_json::from_str::<k8s_openapi::api::networking::v1::NetworkPolicy>(text).map(drop)
        }
        Kind::Pod => serde_json::from_str::<core::Pod>(text).map(drop),
        Kind::Namespace => serde_json::from_str::<core::Namespace>(text).map(drop),
        Kind::Node => serde_json::from_str::<core::Node>(text).map(drop),
        Kind::AdminNetworkPolicy => {
            serde_json::from_str::<crate::anp::AdminNetworkPolicy>(text).map(drop)
        }
        Kind::BaselineAdminNetworkPolicy => {
            serde_json::from_str::<crate::anp::BaselineAdminNetworkPolicy>(text).map(drop)
        }
        Kind::HostEndpoint => serde_json::from_str::<crate::calico::HostEndpoint>(text).map(drop),
        Kind::GlobalNetworkPolicy => {
            serde_json::from_str::<crate::calico::GlobalNetworkPolicy>(text).map(drop)
        }
        Kind::FelixConfiguration => {
            serde_json::from_str::<crate::calico::FelixConfiguration>(text).map(drop)
        }
    }
}

/// Writes `value` as JSON, one scalar or bracket per line; `paths[n]` is the path of line
/// `n` (lines count from 1, so `paths[0]` is unused).
fn render(value: &Value, path: &str, out: &mut String, paths: &mut Vec<String>) {
    let line = |out: &mut String, paths: &mut Vec<String>, text: &str, path: &str| {
        out.push_str(text);
        out.push('\n');
        paths.push(path.to_owned());
    };
    match value {
        Value::Object(map) => {
            line(out, paths, "{", path);
            let n = map.len();
            for (i, (k, v)) in map.iter().enumerate() {
                let child = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                let key = Value::String(k.clone()).to_string();
                line(out, paths, &format!("{key}:"), &child);
                render(v, &child, out, paths);
                if i + 1 < n {
                    line(out, paths, ",", &child);
                }
            }
            line(out, paths, "}", path);
        }
        Value::Array(items) => {
            line(out, paths, "[", path);
            let n = items.len();
            for (i, v) in items.iter().enumerate() {
                let child = format!("{path}[{i}]");
                render(v, &child, out, paths);
                if i + 1 < n {
                    line(out, paths, ",", &child);
                }
            }
            line(out, paths, "]", path);
        }
        scalar => line(out, paths, &scalar.to_string(), path),
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `parse_manifests` of the whole text, and `parse_document` of each piece put together.
    fn whole_and_pieces(
        text: &str,
    ) -> (
        Result<Manifests, ManifestError>,
        Result<Manifests, ManifestError>,
    ) {
        let whole = parse_manifests(text, "f");
        let mut pieces = Manifests::default();
        let mut error = None;
        for document in split_documents(text) {
            match parse_document(&document, "f") {
                Ok(m) => {
                    pieces.objects.extend(m.objects);
                    pieces.skipped.extend(m.skipped);
                }
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        (whole, error.map_or(Ok(pieces), Err))
    }

    #[test]
    fn pieces_parse_as_the_whole_text() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
        let mut texts: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect();
        assert!(texts.len() >= 10);
        texts.extend(
            [
                "",
                "# only a comment\n",
                "---\n",
                "---\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n",
                "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n",
                "# c\n\n--- \napiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n--- # x\napiVersion: v1\nkind: Namespace\nmetadata: {name: b}\n",
                // Not markers: `----`, an indented `---`, `---` inside a block scalar's line.
                "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n  annotations:\n    x: |\n      ---\n      ----\n",
                // Directives and end markers: one piece.
                "%YAML 1.2\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n...\n",
                "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n...\napiVersion: v1\nkind: Namespace\nmetadata: {name: b}\n",
                "apiVersion: v1\r\nkind: Namespace\r\nmetadata: {name: a}\r\n---\r\napiVersion: v1\r\nkind: Namespace\r\nmetadata: {name: b}\r\n",
                // Errors, counted in the whole text.
                "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: { ports: [{ port: http }] }\n",
                "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\nkind: Service\n",
                "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n- 1\n",
            ]
            .map(str::to_owned),
        );
        for text in &texts {
            let (whole, pieces) = whole_and_pieces(text);
            assert_eq!(whole, pieces, "{text}");
        }
        // A YAML error names the line of the whole text.
        let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\na: [\n";
        let (whole, pieces) = whole_and_pieces(text);
        let (
            Err(ManifestError::Yaml { message: w, .. }),
            Err(ManifestError::Yaml { message: p, .. }),
        ) = (whole, pieces)
        else {
            panic!("not YAML errors");
        };
        assert!(w.contains("line 5") || w.contains("line 6"), "{w}");
        assert!(p.contains("line 5") || p.contains("line 6"), "{p}");
    }

    #[test]
    fn lists_and_empty_documents() {
        let text = "---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Namespace\n  metadata: {name: a}\n- apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: c, namespace: a}\n---\n";
        let m = parse_manifests(text, "t").unwrap();
        assert_eq!(m.objects.len(), 1);
        assert_eq!(m.skipped, ["ConfigMap a/c"]);
    }

    #[test]
    fn other_api_versions_are_skipped() {
        let text = "apiVersion: discovery.k8s.io/v1beta1\nkind: EndpointSlice\nmetadata: {name: s, namespace: d}\naddressType: IPv4\nendpoints: []\n";
        let m = parse_manifests(text, "t").unwrap();
        assert_eq!(m.skipped, ["EndpointSlice d/s (discovery.k8s.io/v1beta1)"]);
    }

    #[test]
    fn errors_name_file_document_object_and_path() {
        let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s, namespace: d}\naddressType: IPv4\nendpoints:\n- addresses: [10.0.0.1]\n  conditions: {ready: maybe}\n";
        let err = parse_manifests(text, "f.yaml").unwrap_err();
        match &err {
            ManifestError::Object {
                file,
                document,
                kind,
                name,
                path,
                ..
            } => {
                assert_eq!(
                    (
                        file.as_str(),
                        document.as_str(),
                        *kind,
                        name.as_str(),
                        path.as_str()
                    ),
                    (
                        "f.yaml",
                        "document 2",
                        Kind::EndpointSlice,
                        "d/s",
                        "endpoints[0].conditions.ready"
                    ),
                    "{err}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_wrong_type_of_a_whole_field_names_it() {
        let text =
            "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec: 5\n";
        let err = parse_manifests(text, "f").unwrap_err();
        assert!(
            matches!(&err, ManifestError::Object { path, name, .. } if path == "spec" && name == "shop/web"),
            "{err}"
        );
    }

    #[test]
    fn not_yaml_and_not_objects() {
        assert!(matches!(
            parse_manifests("a: [", "f"),
            Err(ManifestError::Yaml { .. })
        ));
        assert!(matches!(
            parse_manifests("- 1\n", "f"),
            Err(ManifestError::Document { .. })
        ));
        assert!(matches!(
            parse_manifests("kind: Service\n", "f"),
            Err(ManifestError::Document { .. })
        ));
    }
}
