//! Decoding Kubernetes manifests (multi-document YAML or JSON, `List` kinds included) into
//! typed objects, with errors that name the file, document, object and field.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use k8s_openapi::ByteString;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use crate::diagnostics::{Diagnostic, ObjectRef};
use crate::store::{Kind, Object};

/// What one file yielded.
#[derive(Debug, Default)]
pub struct Decoded {
    /// Objects that decoded cleanly.
    pub objects: Vec<Object>,
    /// Objects that failed to decode: kind, namespace/name (when readable) and why.
    pub failed: Vec<(Kind, String, String, Diagnostic)>,
    /// `apiVersion kind namespace/name` of objects of kinds Sluice does not read.
    pub skipped: Vec<String>,
}

/// The file as a whole could not be read as YAML or JSON.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct SyntaxError {
    pub file: String,
    pub message: String,
}

/// Decode every document of a manifest file. `json` selects the JSON parser (better error
/// positions for .json files); otherwise the content is multi-document YAML.
pub fn decode_file(file: &str, content: &[u8], json: bool) -> Result<Decoded, SyntaxError> {
    let documents = if json {
        let value: Value = serde_json::from_slice(content).map_err(|e| SyntaxError {
            file: file.to_string(),
            message: format!("invalid JSON: {e}"),
        })?;
        vec![value]
    } else {
        let mut documents = Vec::new();
        for (index, document) in serde_yaml_ng::Deserializer::from_slice(content).enumerate() {
            let value = Value::deserialize(document).map_err(|e| SyntaxError {
                file: file.to_string(),
                message: format!("invalid YAML in document {}: {e}", index + 1),
            })?;
            documents.push(value);
        }
        documents
    };
    let mut decoded = Decoded::default();
    for document in documents {
        decode_value(file, document, &mut decoded);
    }
    Ok(decoded)
}

fn decode_value(file: &str, value: Value, out: &mut Decoded) {
    if value.is_null() {
        return; // an empty document, e.g. a trailing `---`
    }
    let api_version = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or("");
    let meta = value.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let namespace = meta
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_string();

    if kind.ends_with("List") {
        if let Some(Value::Array(items)) = value.get("items") {
            for item in items.clone() {
                decode_value(file, item, out);
            }
        }
        return;
    }

    let known = match (api_version, kind) {
        ("networking.k8s.io/v1", "IngressClass") => Some(Kind::IngressClass),
        ("networking.k8s.io/v1", "Ingress") => Some(Kind::Ingress),
        ("v1", "Service") => Some(Kind::Service),
        ("discovery.k8s.io/v1", "EndpointSlice") => Some(Kind::EndpointSlice),
        ("v1", "Secret") => Some(Kind::Secret),
        ("v1", "ConfigMap") => Some(Kind::ConfigMap),
        _ => None,
    };
    let Some(known) = known else {
        let hint = match kind {
            "Ingress" | "IngressClass" => {
                " (only networking.k8s.io/v1 is served, as in Kubernetes 1.22+)"
            }
            "EndpointSlice" => " (only discovery.k8s.io/v1)",
            _ => "",
        };
        out.skipped.push(format!(
            "{} {kind} {namespace}/{name}{hint}",
            if api_version.is_empty() {
                "<no apiVersion>"
            } else {
                api_version
            }
        ));
        return;
    };
    let namespace = if known == Kind::IngressClass {
        String::new()
    } else {
        namespace
    };
    let object_ref = ObjectRef::new(known.as_str(), &namespace, &name);
    if name.is_empty() {
        out.failed.push((
            known,
            namespace,
            name,
            Diagnostic::warning(object_ref, "metadata.name", "missing; object skipped")
                .with_origin(file),
        ));
        return;
    }
    let result = match known {
        Kind::IngressClass => {
            typed::<IngressClass>(value).map(|o| Object::IngressClass(Arc::new(o)))
        }
        Kind::Ingress => typed::<Ingress>(value).map(|mut o| {
            o.metadata.namespace = Some(namespace.clone());
            Object::Ingress(Arc::new(o))
        }),
        Kind::Service => typed::<Service>(value).map(|mut o| {
            o.metadata.namespace = Some(namespace.clone());
            Object::Service(Arc::new(o))
        }),
        Kind::EndpointSlice => typed::<EndpointSlice>(value).map(|mut o| {
            o.metadata.namespace = Some(namespace.clone());
            Object::EndpointSlice(Arc::new(o))
        }),
        Kind::Secret => typed::<Secret>(value).map(|mut o| {
            o.metadata.namespace = Some(namespace.clone());
            merge_string_data(&mut o);
            Object::Secret(Arc::new(o))
        }),
        Kind::ConfigMap => typed::<ConfigMap>(value).map(|mut o| {
            o.metadata.namespace = Some(namespace.clone());
            Object::ConfigMap(Arc::new(o))
        }),
    };
    match result {
        Ok(object) => out.objects.push(object),
        Err((field, message)) => out.failed.push((
            known,
            namespace,
            name,
            Diagnostic::warning(object_ref, field, message).with_origin(file),
        )),
    }
}

/// Decode into a typed object; on failure return the field path and the reason.
fn typed<T: DeserializeOwned>(value: Value) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { String::new() } else { path };
        (field, e.into_inner().to_string())
    })
}

/// The API server folds `stringData` into `data` on write; a manifest folder must do the same.
fn merge_string_data(secret: &mut Secret) {
    if let Some(string_data) = secret.string_data.take() {
        let data = secret.data.get_or_insert_with(BTreeMap::new);
        for (key, value) in string_data {
            data.insert(key, ByteString(value.into_bytes()));
        }
    }
}

impl Diagnostic {
    pub fn with_origin(mut self, origin: &str) -> Self {
        self.origin = Some(origin.to_string());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_yaml_with_unknown_kinds_and_lists() {
        let yaml = br#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  ports: [{name: http, port: 80}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: cfg, namespace: network}
  data: {use-gzip: "true"}
---
"#;
        let decoded = decode_file("a.yaml", yaml, false).unwrap();
        assert_eq!(decoded.objects.len(), 2);
        assert_eq!(decoded.objects[0].key(), ("default".into(), "web".into()));
        assert_eq!(decoded.objects[1].key(), ("network".into(), "cfg".into()));
        assert_eq!(decoded.skipped.len(), 1);
        assert!(decoded.skipped[0].contains("Deployment"));
    }

    #[test]
    fn type_errors_name_the_field() {
        let yaml = br#"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: bad, namespace: shop}
spec:
  rules:
  - host: a.example
    http:
      paths:
      - path: /
        pathType: Prefix
        backend: {service: {name: web, port: {number: "eighty"}}}
"#;
        let decoded = decode_file("bad.yaml", yaml, false).unwrap();
        assert!(decoded.objects.is_empty());
        let (kind, ns, name, diag) = &decoded.failed[0];
        assert_eq!(
            (*kind, ns.as_str(), name.as_str()),
            (Kind::Ingress, "shop", "bad")
        );
        assert_eq!(
            diag.field,
            "spec.rules[0].http.paths[0].backend.service.port.number"
        );
        let text = diag.to_string();
        assert!(
            text.starts_with("bad.yaml: Ingress shop/bad field spec.rules"),
            "{text}"
        );
    }

    #[test]
    fn syntax_errors_fail_the_file() {
        let err = decode_file("x.yaml", b"kind: [unclosed", false).unwrap_err();
        assert!(err.to_string().starts_with("x.yaml: invalid YAML"), "{err}");
        let err = decode_file("x.json", b"{\"kind\":", true).unwrap_err();
        assert!(err.to_string().starts_with("x.json: invalid JSON"), "{err}");
    }

    #[test]
    fn secret_string_data_is_folded_into_data() {
        let yaml = br#"
apiVersion: v1
kind: Secret
metadata: {name: s}
stringData: {auth: "user:hash"}
"#;
        let decoded = decode_file("s.yaml", yaml, false).unwrap();
        let Object::Secret(secret) = &decoded.objects[0] else {
            panic!()
        };
        assert_eq!(secret.data.as_ref().unwrap()["auth"].0, b"user:hash");
    }
}
