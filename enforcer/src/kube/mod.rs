//! Kubernetes controller (WIP)
