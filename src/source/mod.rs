//! Where objects come from. Every source turns what it reads into [`crate::store::StoreEvent`]s;
//! nothing downstream knows which source produced an object.

pub mod configmap_refs;
pub mod file;
pub mod kube;
pub mod manifest;
pub mod secret_refs;
