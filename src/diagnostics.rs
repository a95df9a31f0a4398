//! Problems found in the configuration: which object, which field, what is wrong. They are
//! logged (and in cluster mode posted as Events); the object or field is skipped and the
//! rest keeps serving.

use std::fmt;

/// The object a diagnostic is about. `kind` is the Kubernetes kind (`Ingress`, `Service`,
/// ...) or `File` for a manifest that could not be read at all.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    pub fn new(kind: &'static str, namespace: &str, name: &str) -> ObjectRef {
        ObjectRef {
            kind,
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// The object or field was skipped or replaced by a default.
    Warning,
    /// Informational: something was ignored on purpose (an object of another class).
    Info,
}

/// One problem with one object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Diagnostic {
    pub object: ObjectRef,
    /// JSON-path-like field, e.g. `spec.rules[0].http.paths[1].pathType`; empty when the
    /// whole object is concerned.
    pub field: String,
    pub message: String,
    pub severity: Severity,
    /// Where the object came from (a manifest file), when known.
    pub origin: Option<String>,
}

impl Diagnostic {
    pub fn warning(
        object: ObjectRef,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Diagnostic {
            object,
            field: field.into(),
            message: message.into(),
            severity: Severity::Warning,
            origin: None,
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(origin) = &self.origin {
            write!(f, "{origin}: ")?;
        }
        write!(f, "{}", self.object)?;
        if !self.field.is_empty() {
            write!(f, " field {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}
