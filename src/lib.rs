//! Sluice: a Kubernetes ingress controller and L7 reverse proxy that speaks ingress-nginx's
//! annotations, ConfigMap keys and metrics.
//!
//! The data path, from left to right:
//! `source` (manifest folder or API server) -> `store` -> `translate` (pure) -> `snapshot`
//! -> `publish` (one `ArcSwap`) -> `proxy` (listener, route, forward) -> `metrics` / access log.
//! `proxy` and `snapshot` never see a Kubernetes type: `translate` turns objects into plain ones.
#![forbid(unsafe_code)]

pub mod access_log;
pub mod acme;
pub mod admin;
pub mod app;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod compat;
pub mod diagnostics;
pub mod events;
pub mod internal_ca;
pub mod leader;
pub mod metrics;
pub mod proxy;
pub mod publish;
pub mod settings;
pub mod snapshot;
pub mod source;
pub mod status;
pub mod store;
pub mod translate;
