//! Which Ingresses this controller serves, exactly as ingress-nginx decides (reference §6):
//! `spec.ingressClassName` naming an IngressClass whose `spec.controller` is ours, else the
//! legacy `kubernetes.io/ingress.class` annotation equal to `--ingress-class`, else only with
//! `--watch-ingress-without-class`.

use std::collections::HashSet;

use k8s_openapi::api::networking::v1::Ingress;

use super::TranslateOptions;
use crate::store::Store;

/// The legacy class annotation.
pub const LEGACY_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";

/// Why an Ingress is or is not ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClassDecision {
    Served,
    /// Not ours; the reason, for a debug log line.
    Ignored(String),
}

/// The class rules, resolved once per translation.
#[derive(Debug)]
pub struct ClassFilter {
    /// IngressClass names that belong to this controller.
    our_classes: HashSet<String>,
    ingress_class: String,
    watch_without_class: bool,
}

impl ClassFilter {
    pub fn new(store: &Store, options: &TranslateOptions) -> ClassFilter {
        let our_classes = store
            .ingress_classes
            .iter()
            .filter(|((_, name), class)| {
                let controller = class.spec.as_ref().and_then(|s| s.controller.as_deref());
                controller == Some(options.controller_class.as_str())
                    || (options.ingress_class_by_name && *name == options.ingress_class)
            })
            .map(|((_, name), _)| name.clone())
            .collect();
        ClassFilter {
            our_classes,
            ingress_class: options.ingress_class.clone(),
            watch_without_class: options.watch_ingress_without_class,
        }
    }

    pub fn decide(&self, ingress: &Ingress) -> ClassDecision {
        let class_name = ingress
            .spec
            .as_ref()
            .and_then(|s| s.ingress_class_name.as_deref());
        if let Some(class_name) = class_name {
            // The legacy annotation is not consulted when the field is set.
            return if self.our_classes.contains(class_name) {
                ClassDecision::Served
            } else {
                ClassDecision::Ignored(format!(
                    "spec.ingressClassName {class_name:?} is not an IngressClass of this controller"
                ))
            };
        }
        let annotation = ingress
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(LEGACY_CLASS_ANNOTATION));
        if let Some(value) = annotation {
            return if *value == self.ingress_class {
                ClassDecision::Served
            } else {
                ClassDecision::Ignored(format!(
                    "annotation {LEGACY_CLASS_ANNOTATION}={value:?} is not {:?}",
                    self.ingress_class
                ))
            };
        }
        if self.watch_without_class {
            ClassDecision::Served
        } else {
            ClassDecision::Ignored(
                "no class (set spec.ingressClassName, or run with --watch-ingress-without-class)"
                    .to_string(),
            )
        }
    }
}
