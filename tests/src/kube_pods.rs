//! Pods of real workload kinds for the Kubernetes tests: a Deployment's pod (ReplicaSet owner,
//! `pod-template-hash`), a static pod's mirror (the kubelet's cgroup named after the manifest
//! hash), pods of other nodes, and the daemon's admin endpoints.

use std::net::SocketAddr;

use serde_json::{Value, json};

use crate::{KubeDaemon, KubeNode, NODE, admin_addr_from_log, http_get};

impl KubeNode {
    /// A BestEffort pod of Deployment `deployment` (ReplicaSet `<deployment>-<hash>`), with
    /// `labels` besides `pod-template-hash`.
    pub fn deployment_pod(&self, ns: &str, deployment: &str, uid: &str, labels: Value) {
        let hash = "7d9f8c6d5";
        let rs = format!("{deployment}-{hash}");
        let mut labels = labels;
        labels["pod-template-hash"] = json!(hash);
        self.api.put(
            "Pod",
            json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": format!("{rs}-x2k4p"), "namespace": ns, "uid": uid, "generateName": format!("{rs}-"),
                                "labels": labels,
                                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs, "uid": "rs-uid", "controller": true}]},
                   "spec": {"nodeName": NODE, "containers": [{"name": "app", "image": "busybox"}]},
                   "status": {"phase": "Running", "qosClass": "BestEffort"}}),
        );
    }

    /// The mirror pod of a static pod `name` (kubelet manifest): its own API `uid`, the
    /// manifest hash in `kubernetes.io/config.hash` / `kubernetes.io/config.mirror`, the Node
    /// as its owner.
    pub fn mirror_pod(&self, ns: &str, name: &str, mirror_uid: &str, hash: &str) {
        self.api.put(
            "Pod",
            json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": format!("{name}-{NODE}"), "namespace": ns, "uid": mirror_uid,
                                "annotations": {"kubernetes.io/config.hash": hash, "kubernetes.io/config.mirror": hash,
                                                "kubernetes.io/config.source": "file", "kubernetes.io/config.seen": "2025-01-01T00:00:00Z"},
                                "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": NODE, "uid": "node-uid", "controller": true}]},
                   "spec": {"nodeName": NODE, "containers": [{"name": name, "image": "busybox"}]},
                   "status": {"phase": "Running", "qosClass": "BestEffort"}}),
        );
    }

    /// A BestEffort pod with `dnsPolicy: None` and `dnsConfig.nameservers` (its own resolvers).
    pub fn dns_pod(&self, ns: &str, name: &str, uid: &str, nameservers: &[&str]) {
        self.api.put(
            "Pod",
            json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": name, "namespace": ns, "uid": uid},
                   "spec": {"nodeName": NODE, "containers": [{"name": "app", "image": "busybox"}],
                            "dnsPolicy": "None", "dnsConfig": {"nameservers": nameservers}},
                   "status": {"phase": "Running", "qosClass": "BestEffort"}}),
        );
    }

    /// A running pod of another node (`node-2`) with pod IP `ip` and `labels` (never governed
    /// here: only the daemon's ServiceEntry `workloadSelector` watch sees it).
    pub fn remote_pod(&self, ns: &str, name: &str, ip: &str, labels: Value) {
        self.api.put(
            "Pod",
            json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": name, "namespace": ns, "uid": format!("remote-{ns}-{name}"), "labels": labels},
                   "spec": {"nodeName": "node-2", "containers": [{"name": "app", "image": "busybox"}]},
                   "status": {"phase": "Running", "qosClass": "BestEffort", "podIP": ip, "podIPs": [{"ip": ip}]}}),
        );
    }
}

impl KubeDaemon {
    /// The admin listener (`--admin 127.0.0.1:0`) from the log.
    pub fn admin(&self) -> SocketAddr {
        admin_addr_from_log(&self.log()).unwrap_or_else(|| panic!("no admin address in the log\n{}", self.log()))
    }

    /// The public listener (`--metrics-addr`: metrics and health, what Prometheus scrapes).
    pub fn public(&self) -> SocketAddr {
        let log = self.log();
        log.lines()
            .find(|l| l.contains("public metrics and health listener"))
            .and_then(|l| l.split("addr=").nth(1)?.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no public listener in the log\n{log}"))
    }

    /// GET `path` from the admin listener.
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        http_get(self.admin(), path)
    }
}
