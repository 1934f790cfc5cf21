//! A Kubernetes node for `enforcer daemon --kubernetes`: the fake API server ([`FakeApi`]), a
//! kubelet-shaped cgroup tree (systemd driver: `kubepods.slice/kubepods-besteffort.slice/
//! kubepods-besteffort-pod<uid>.slice/cri-containerd-<id>.scope`) below a child cgroup of the
//! test, pods whose processes run in that tree and in a network namespace of the test (not the
//! host's), and the daemon ([`KubeDaemon`]) pointed at the fake API by a kubeconfig.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::{Cgroup, FakeApi, Netns, PinDir, TempDir, enforcer_bin, python};

/// tests/helpers/kube_loop.py (its docstring says what it prints).
pub const KUBE_LOOP_PY: &str = include_str!("../helpers/kube_loop.py");

pub const NODE: &str = "node-1";

/// The node: API server, cgroup tree, the pods' network.
pub struct KubeNode {
    pub api: FakeApi,
    /// The test's cgroup holding the kubelet tree (`--cgroup` of the daemon).
    pub base: Cgroup,
    pub net: Netns,
    pub dir: TempDir,
}

impl KubeNode {
    pub fn new() -> Self {
        let api = FakeApi::start();
        let base = Cgroup::new("kube");
        fs::create_dir_all(base.path.join("kubepods.slice/kubepods-besteffort.slice")).unwrap();
        fs::create_dir_all(base.path.join("kubepods.slice/kubepods-burstable.slice")).unwrap();
        let dir = TempDir::new("kube");
        api.kubeconfig(&dir.join("kubeconfig"));
        Self { api, base, net: Netns::new(), dir }
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// A namespace, opted in or not.
    pub fn namespace(&self, name: &str, opted_in: bool) {
        let labels = if opted_in { json!({"istio.io/dataplane-mode": "enforcer"}) } else { json!({}) };
        self.api.put(
            "Namespace",
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}),
        );
    }

    /// The `istio` mesh ConfigMap with `mode`.
    pub fn mesh_mode(&self, mode: &str) {
        self.api.put(
            "ConfigMap",
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "istio", "namespace": "istio-system"},
                   "data": {"mesh": format!("outboundTrafficPolicy:\n  mode: {mode}\n")}}),
        );
    }

    /// A ClusterIP Service with one port and its EndpointSlice.
    pub fn service(&self, ns: &str, name: &str, cluster_ip: &str, port: u16, endpoint: Option<(&str, u16)>) {
        self.api.put(
            "Service",
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns, "uid": format!("svc-{ns}-{name}")},
                   "spec": {"type": "ClusterIP", "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
                            "ports": [{"name": "p", "port": port, "protocol": "TCP", "targetPort": endpoint.map_or(port, |e| e.1)}]}}),
        );
        if let Some((ip, p)) = endpoint {
            self.api.put(
                "EndpointSlice",
                json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                       "metadata": {"name": format!("{name}-abcde"), "namespace": ns, "labels": {"kubernetes.io/service-name": name}},
                       "addressType": "IPv4",
                       "endpoints": [{"addresses": [ip], "conditions": {"ready": true}}],
                       "ports": [{"name": "p", "port": p, "protocol": "TCP"}]}),
            );
        }
    }

    /// A BestEffort pod bound to this node (API object only; [`KubeNode::sandbox`] makes its
    /// cgroup).
    pub fn pod(&self, ns: &str, name: &str, uid: &str) {
        self.api.put(
            "Pod",
            json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": name, "namespace": ns, "uid": uid, "generateName": format!("{name}-"),
                                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": name, "uid": "x", "controller": true}]},
                   "spec": {"nodeName": NODE, "containers": [{"name": "app", "image": "busybox"}]},
                   "status": {"phase": "Running", "qosClass": "BestEffort"}}),
        );
    }

    /// The pod's cgroup as the kubelet creates it: pod directory and one container scope.
    pub fn sandbox(&self, uid: &str) -> PodCgroup {
        let pod = self.base.path.join(format!(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice",
            uid.replace('-', "_")
        ));
        let container = pod.join("cri-containerd-0123456789abcdef.scope");
        fs::create_dir_all(&container).unwrap();
        PodCgroup { pod, container }
    }

    /// Run tests/helpers/kube_loop.py in the pod (its netns: the node's test netns) for `secs`
    /// over `targets` (`ADDR:PORT:allow|deny`), in the background.
    pub fn spawn_loop(&self, cg: &PodCgroup, secs: f64, targets: &[String]) -> Child {
        let mut c = self.net.command(python());
        c.arg("-c").arg(KUBE_LOOP_PY).arg(secs.to_string()).args(targets);
        c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        cg.enter_on_exec(&mut c);
        c.spawn().expect("spawning the pod's verdict loop")
    }

    /// Run the worker (tests/helpers/worker.py) one-shot in the pod: one JSON result per request.
    pub fn worker(&self, cg: &PodCgroup, reqs: &[Value]) -> Vec<Value> {
        let mut c = self.net.command(python());
        c.arg("-c").arg(crate::WORKER_PY).args(reqs.iter().map(|r| r.to_string()));
        cg.enter_on_exec(&mut c);
        let out = crate::output_with_timeout(&mut c, Duration::from_secs(60));
        crate::parse_worker(&out, reqs.len())
    }

    /// Run the connect client (tests/helpers/client.py) in the pod.
    pub fn client(&self, cg: &PodCgroup, ops: &[String]) -> crate::ClientRun {
        let mut c = self.net.command(python());
        c.arg("-c").arg(crate::CLIENT_PY).args(ops);
        cg.enter_on_exec(&mut c);
        crate::ClientRun::from(crate::output_with_timeout(&mut c, Duration::from_secs(30)), ops.len())
    }
}

impl Drop for KubeNode {
    fn drop(&mut self) {
        // The kubelet tree below the test's cgroup, deepest first (the base guard removes only
        // itself).
        fn walk(p: &Path, out: &mut Vec<PathBuf>) {
            if let Ok(rd) = fs::read_dir(p) {
                for e in rd.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        walk(&e.path(), out);
                        out.push(e.path());
                    }
                }
            }
        }
        let mut dirs = Vec::new();
        walk(&self.base.path, &mut dirs);
        for d in dirs {
            remove_cgroup(&d);
        }
    }
}

impl Default for KubeNode {
    fn default() -> Self {
        Self::new()
    }
}

/// The loop's result.
pub fn loop_result(child: Child) -> Value {
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!("verdict loop output is not JSON ({e}): {text}\n{}", String::from_utf8_lossy(&out.stderr))
    })
}

/// A pod's cgroup directories; removed (processes killed) on drop, container first.
pub struct PodCgroup {
    pub pod: PathBuf,
    pub container: PathBuf,
}

impl PodCgroup {
    /// Make `cmd` join the container cgroup before it execs.
    pub fn enter_on_exec(&self, cmd: &mut Command) {
        use std::os::{fd::AsRawFd as _, unix::process::CommandExt as _};
        let procs = fs::OpenOptions::new().write(true).open(self.container.join("cgroup.procs")).unwrap();
        let fd = procs.as_raw_fd();
        let procs = std::sync::Arc::new(procs);
        // SAFETY: only write(2) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let _keep = &procs;
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    /// Kill what runs in it and remove it now.
    pub fn remove(self) {}
}

fn remove_cgroup(p: &Path) {
    let _ = fs::write(p.join("cgroup.kill"), "1");
    for _ in 0..250 {
        match fs::remove_dir(p) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        remove_cgroup(&self.container);
        remove_cgroup(&self.pod);
    }
}

/// `enforcer daemon --kubernetes` on a [`KubeNode`]. Unlike [`crate::Daemon`] it does not wait
/// for the start to finish (a daemon whose API server is unreachable waits for it).
pub struct KubeDaemon {
    child: Option<Child>,
    pub log_path: PathBuf,
    pid_file: PathBuf,
    _dir: TempDir,
}

impl KubeDaemon {
    pub fn spawn(node: &KubeNode, pins: &PinDir, extra: &[&str]) -> Self {
        let dir = TempDir::new("kubed");
        let log_path = dir.join("daemon.log");
        let pid_file = dir.join("daemon.pid");
        let log = fs::File::create(&log_path).unwrap();
        let child = Command::new(enforcer_bin())
            .args(["--log", "info,enforcer::kube=debug", "daemon", "--kubernetes", "--node-name", NODE])
            .arg("--cgroup")
            .arg(&node.base.path)
            .arg("--pin-dir")
            .arg(&pins.path)
            .arg("--kubeconfig")
            .arg(node.kubeconfig())
            .arg("--pid-file")
            .arg(&pid_file)
            .args(["--admin", "127.0.0.1:0", "--no-watch", "--kube-node-resolv-conf", "/dev/null"])
            .args(extra)
            .env("NO_COLOR", "1")
            .env_remove("POD_NAMESPACE")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawning enforcer daemon --kubernetes");
        Self { child: Some(child), log_path, pid_file, _dir: dir }
    }

    /// Spawn and wait (≤ 30 s) until enforcement (with the first full sync) is in place.
    pub fn start(node: &KubeNode, pins: &PinDir, extra: &[&str]) -> Self {
        let mut d = Self::spawn(node, pins, extra);
        d.wait_started(Duration::from_secs(30));
        d
    }

    pub fn wait_started(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if fs::read_to_string(&self.pid_file).is_ok_and(|s| !s.trim().is_empty()) {
                return;
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("enforcer daemon exited during start-up ({st})\n--- log\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "enforcer daemon did not finish starting\n--- log\n{}", self.log());
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn started(&self) -> bool {
        fs::read_to_string(&self.pid_file).is_ok_and(|s| !s.trim().is_empty())
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Wait (≤ 20 s) until the log contains `needle` at least `n` times.
    pub fn wait_log_count(&self, needle: &str, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.log().matches(needle).count() < n {
            assert!(Instant::now() < deadline, "daemon log never had {n}x {needle:?}\n--- log\n{}", self.log());
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM and wait (≤ 20 s). The pins stay.
    pub fn stop(mut self) -> String {
        self.terminate();
        self.log()
    }

    fn terminate(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        // SAFETY: plain syscall on our child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for KubeDaemon {
    fn drop(&mut self) {
        self.terminate();
        if std::env::var_os("ENFORCER_TESTS_VERBOSE").is_some() || thread::panicking() {
            eprintln!("--- enforcer daemon log ({})\n{}", self.log_path.display(), self.log());
        }
    }
}
