//! Sidecar injection for Kubernetes workloads.
//!
//! It will add the mesh-proxy init step and sidecar container to pod templates
//! as a pure function over manifests (used by `meshctl kube-inject`), and serve
//! the same function as a mutating admission webhook. Nothing is implemented
//! yet: see the injection issue.
