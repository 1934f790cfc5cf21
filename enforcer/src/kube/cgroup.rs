//! Pod -> its pod-level cgroup v2 directory, for the kubelet's cgroup layouts.
//!
//! | driver | QoS | directory (relative to the cgroup2 mount) |
//! | --- | --- | --- |
//! | systemd | Guaranteed | `kubepods.slice/kubepods-pod<uid_>.slice` |
//! | systemd | Burstable | `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice` |
//! | systemd | BestEffort | `kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid_>.slice` |
//! | cgroupfs | Guaranteed | `kubepods/pod<uid>` |
//! | cgroupfs | Burstable | `kubepods/burstable/pod<uid>` |
//! | cgroupfs | BestEffort | `kubepods/besteffort/pod<uid>` |
//!
//! `<uid_>` is the pod UID with `-` replaced by `_` (systemd unit names). Containers live below
//! the pod directory (`cri-containerd-<id>.scope`, `crio-<id>.scope`, `crio-conmon-<id>.scope`,
//! or `<id>` with cgroupfs): the pod directory is what a policy is attached to, the kernel judges
//! descendants by walking up to it. Kubelets started with `--cgroup-root` (kind: `kubelet.slice/
//! kubelet-kubepods.slice/...`) are found by the bounded fallback search.

use std::fs;
use std::path::{Path, PathBuf};

/// The pod's QoS class (`status.qosClass`), which decides the kubelet's parent cgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl QosClass {
    /// From `status.qosClass`; unknown or absent values give `None`.
    pub fn parse(s: &str) -> Option<QosClass> {
        match s {
            "Guaranteed" => Some(QosClass::Guaranteed),
            "Burstable" => Some(QosClass::Burstable),
            "BestEffort" => Some(QosClass::BestEffort),
            _ => None,
        }
    }
}

/// How deep the fallback search goes below the cgroup root.
const SEARCH_DEPTH: usize = 5;

/// The candidate pod directories for `qos`, in the order they are checked (the systemd layout
/// first: it is the default of kubeadm, kind, k3s and the managed distributions on cgroup v2).
///
/// `cgroup_root` is the cgroup2 mount (`/sys/fs/cgroup`), or the kubepods directory itself
/// (`/sys/fs/cgroup/kubepods.slice` or `/sys/fs/cgroup/kubepods`): both are accepted.
pub fn candidates(cgroup_root: &Path, pod_uid: &str, qos: QosClass) -> Vec<PathBuf> {
    let dashed = pod_uid.replace('_', "-");
    let under = dashed.replace('-', "_");
    let systemd = match qos {
        QosClass::Guaranteed => PathBuf::from(format!("kubepods-pod{under}.slice")),
        QosClass::Burstable => {
            PathBuf::from("kubepods-burstable.slice").join(format!("kubepods-burstable-pod{under}.slice"))
        }
        QosClass::BestEffort => {
            PathBuf::from("kubepods-besteffort.slice").join(format!("kubepods-besteffort-pod{under}.slice"))
        }
    };
    let cgroupfs = match qos {
        QosClass::Guaranteed => PathBuf::from(format!("pod{dashed}")),
        QosClass::Burstable => PathBuf::from("burstable").join(format!("pod{dashed}")),
        QosClass::BestEffort => PathBuf::from("besteffort").join(format!("pod{dashed}")),
    };
    match cgroup_root.file_name().and_then(|n| n.to_str()) {
        Some("kubepods.slice") => vec![cgroup_root.join(systemd)],
        Some("kubepods") => vec![cgroup_root.join(cgroupfs)],
        _ => vec![cgroup_root.join("kubepods.slice").join(systemd), cgroup_root.join("kubepods").join(cgroupfs)],
    }
}

/// The pod-level cgroup directory of the pod `pod_uid`, if it exists yet.
///
/// Checks the standard locations for `qos` first; if none exists, searches the kubepods trees
/// (directories whose name contains `kubepods` or `kubelet`, at most five levels deep) for a
/// directory named with `pod<uid>` in either form (dashes or underscores). This also finds a pod
/// whose QoS class was guessed wrong or a kubelet with a custom `--cgroup-root`.
pub fn find_pod_cgroup(cgroup_root: &Path, pod_uid: &str, qos: QosClass) -> Option<PathBuf> {
    if pod_uid.is_empty() {
        return None;
    }
    if let Some(found) = candidates(cgroup_root, pod_uid, qos).into_iter().find(|p| p.is_dir()) {
        return Some(found);
    }
    search(cgroup_root, pod_uid)
}

/// Breadth-first search below `cgroup_root` (shallowest match wins).
fn search(cgroup_root: &Path, pod_uid: &str) -> Option<PathBuf> {
    let dashed = format!("pod{}", pod_uid.replace('_', "-"));
    let under = format!("pod{}", pod_uid.replace('-', "_"));
    let root_is_kubepods = cgroup_root.file_name().and_then(|n| n.to_str()).is_some_and(is_kube_tree);
    let mut level = vec![cgroup_root.to_path_buf()];
    for depth in 0..SEARCH_DEPTH {
        let mut next = Vec::new();
        for dir in &level {
            let Ok(entries) = fs::read_dir(dir) else { continue };
            let mut names: Vec<(String, PathBuf)> = entries
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
                .collect();
            names.sort();
            for (name, path) in names {
                if ends_with_pod(&name, &dashed) || ends_with_pod(&name, &under) {
                    return Some(path);
                }
                // At the top of the cgroup2 mount only the kubelet's trees are descended into
                // (system.slice and user.slice can be large and never hold pods).
                if depth > 0 || root_is_kubepods || is_kube_tree(&name) {
                    next.push(path);
                }
            }
        }
        level = next;
    }
    None
}

fn is_kube_tree(name: &str) -> bool {
    name.contains("kubepods") || name.contains("kubelet")
}

/// `name` is the pod directory for `pod_token` (`pod<uid>`): `pod<uid>`,
/// `kubepods-burstable-pod<uid>.slice`, ... (the token ends the name, before `.slice`).
fn ends_with_pod(name: &str, pod_token: &str) -> bool {
    let stem = name.strip_suffix(".slice").unwrap_or(name);
    stem == pod_token || stem.ends_with(&format!("-{pod_token}"))
}

/// The kubelet's cgroup driver, which decides how pod directories are named.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    /// `<prefix>-burstable.slice/<prefix>-burstable-pod<uid_>.slice`.
    Systemd,
    /// `burstable/pod<uid>`.
    Cgroupfs,
}

/// Where the kubelet keeps its pods: the directory holding the pod (and QoS) cgroups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeletRoot {
    pub dir: PathBuf,
    pub driver: Driver,
}

/// The layouts tried by [`detect_root`], in order, relative to the search base.
pub const ROOT_CANDIDATES: [&str; 5] = [
    "kubepods.slice",
    "kubelet.slice/kubelet-kubepods.slice",
    "kubepods",
    "kubelet/kubepods",
    "kubelet.slice/kubepods.slice",
];

impl KubeletRoot {
    /// A known directory: the driver follows from its name (`*.slice`: systemd).
    pub fn at(dir: impl Into<PathBuf>) -> KubeletRoot {
        let dir = dir.into();
        let driver = if dir.extension().is_some_and(|e| e == "slice") { Driver::Systemd } else { Driver::Cgroupfs };
        KubeletRoot { dir, driver }
    }

    /// systemd slice prefix: `kubepods` for `kubepods.slice`, `kubelet-kubepods` for kind's.
    fn prefix(&self) -> String {
        self.dir.file_stem().and_then(|n| n.to_str()).unwrap_or("kubepods").to_string()
    }

    /// The pod directories a pod with `uid` can have (one per QoS class): the paths a policy
    /// names before the kubelet creates the directory, so enrolment needs no recompute.
    pub fn pod_dirs(&self, uid: &str) -> Vec<PathBuf> {
        let dashed = uid.replace('_', "-");
        match self.driver {
            Driver::Systemd => {
                let p = self.prefix();
                let under = dashed.replace('-', "_");
                vec![
                    self.dir.join(format!("{p}-pod{under}.slice")),
                    self.dir.join(format!("{p}-burstable.slice")).join(format!("{p}-burstable-pod{under}.slice")),
                    self.dir.join(format!("{p}-besteffort.slice")).join(format!("{p}-besteffort-pod{under}.slice")),
                ]
            }
            Driver::Cgroupfs => vec![
                self.dir.join(format!("pod{dashed}")),
                self.dir.join("burstable").join(format!("pod{dashed}")),
                self.dir.join("besteffort").join(format!("pod{dashed}")),
            ],
        }
    }

    /// The QoS directories pod directories appear in (the root itself, burstable, besteffort).
    pub fn parent_dirs(&self) -> Vec<PathBuf> {
        match self.driver {
            Driver::Systemd => {
                let p = self.prefix();
                vec![
                    self.dir.clone(),
                    self.dir.join(format!("{p}-burstable.slice")),
                    self.dir.join(format!("{p}-besteffort.slice")),
                ]
            }
            Driver::Cgroupfs => vec![self.dir.clone(), self.dir.join("burstable"), self.dir.join("besteffort")],
        }
    }

    /// Every pod directory that exists now, with its pod UID (dashed form).
    pub fn scan(&self) -> Vec<(String, PathBuf)> {
        let mut out = Vec::new();
        for parent in self.parent_dirs() {
            let Ok(rd) = fs::read_dir(&parent) else { continue };
            for e in rd.flatten() {
                if let Some(uid) = e.file_name().to_str().and_then(pod_uid_of)
                    && e.file_type().is_ok_and(|t| t.is_dir())
                {
                    out.push((uid, e.path()));
                }
            }
        }
        out.sort();
        out
    }
}

/// The pod UID (dashed) a pod-level cgroup directory name carries: `kubepods-pod<uid_>.slice`,
/// `kubepods-burstable-pod<uid_>.slice`, `kubelet-kubepods-besteffort-pod<uid_>.slice`,
/// `pod<uid>`, also with a static pod's 32-hex-digit UID; `None` for QoS slices, container
/// scopes and anything else.
pub fn pod_uid_of(name: &str) -> Option<String> {
    let stem = name.strip_suffix(".slice").unwrap_or(name);
    let idx = if stem.starts_with("pod") { 0 } else { stem.rfind("-pod")? + 1 };
    let uid = stem[idx + 3..].replace('_', "-");
    // An API server UID: 32 hex digits in 8-4-4-4-12 groups; a static pod's (the kubelet's hash
    // of its manifest, `kubernetes.io/config.hash`): 32 hex digits.
    let hex = |s: &str| s.chars().all(|c| c.is_ascii_hexdigit());
    let ok = (uid.len() == 36 && uid.split('-').map(str::len).eq([8, 4, 4, 4, 12]) && hex(&uid.replace('-', "")))
        || (uid.len() == 32 && hex(&uid));
    ok.then(|| uid.to_ascii_lowercase())
}

/// Find the kubelet's pod tree below `base` (the cgroup2 mount, or a test's own tree): the first
/// of [`ROOT_CANDIDATES`] that exists, else the shallowest directory (at most three levels down)
/// named `kubepods`, `*-kubepods.slice` or `kubepods.slice`. `base` itself is accepted when it is
/// such a directory.
pub fn detect_root(base: &Path) -> Option<KubeletRoot> {
    let is_root_name = |n: &str| n == "kubepods" || n == "kubepods.slice" || n.ends_with("-kubepods.slice");
    if base.file_name().and_then(|n| n.to_str()).is_some_and(is_root_name) && base.is_dir() {
        return Some(KubeletRoot::at(base));
    }
    if let Some(c) = ROOT_CANDIDATES.iter().map(|c| base.join(c)).find(|p| p.is_dir()) {
        return Some(KubeletRoot::at(c));
    }
    let mut level = vec![base.to_path_buf()];
    for _ in 0..3 {
        let mut next = Vec::new();
        for dir in &level {
            let Ok(rd) = fs::read_dir(dir) else { continue };
            let mut names: Vec<(String, PathBuf)> = rd
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
                .collect();
            names.sort();
            for (name, path) in names {
                if is_root_name(&name) {
                    return Some(KubeletRoot::at(path));
                }
                next.push(path);
            }
        }
        level = next;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "8f1c2b5e-3a4d-4f6b-9c1d-2e3f4a5b6c7d";
    const UID_: &str = "8f1c2b5e_3a4d_4f6b_9c1d_2e3f4a5b6c7d";

    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> TempDir {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static N: AtomicUsize = AtomicUsize::new(0);
            let p = std::env::temp_dir().join(format!(
                "enforcer-kube-cg-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&p);
            fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
        fn mk(&self, rel: &str) -> PathBuf {
            let p = self.0.join(rel);
            fs::create_dir_all(&p).unwrap();
            p
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// Build a node's tree with several pods (and their container scopes), then check `pod`.
    fn check(layout: &[&str], uid: &str, qos: QosClass, expect: &str) {
        let t = TempDir::new("layout");
        t.mk("system.slice/containerd.service");
        t.mk("user.slice/user-0.slice");
        for d in layout {
            t.mk(d);
        }
        let got = find_pod_cgroup(&t.0, uid, qos);
        assert_eq!(got, Some(t.0.join(expect)), "layout {layout:?}");
    }

    #[test]
    fn systemd_burstable_with_containerd_scopes() {
        let pod = format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice");
        check(
            &[
                &format!("{pod}/cri-containerd-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.scope"),
                &format!("{pod}/cri-containerd-fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210.scope"),
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod11111111_2222_3333_4444_555555555555.slice",
            ],
            UID,
            QosClass::Burstable,
            &pod,
        );
    }

    #[test]
    fn systemd_guaranteed_directly_under_kubepods() {
        let pod = format!("kubepods.slice/kubepods-pod{UID_}.slice");
        check(
            &[&format!("{pod}/cri-containerd-aaaa.scope"), "kubepods.slice/kubepods-burstable.slice"],
            UID,
            QosClass::Guaranteed,
            &pod,
        );
    }

    #[test]
    fn systemd_besteffort_with_crio_scopes() {
        let pod = format!("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice");
        check(
            &[&format!("{pod}/crio-0123abcd.scope"), &format!("{pod}/crio-conmon-0123abcd.scope")],
            UID,
            QosClass::BestEffort,
            &pod,
        );
    }

    #[test]
    fn cgroupfs_layouts() {
        for (qos, pod) in [
            (QosClass::Guaranteed, format!("kubepods/pod{UID}")),
            (QosClass::Burstable, format!("kubepods/burstable/pod{UID}")),
            (QosClass::BestEffort, format!("kubepods/besteffort/pod{UID}")),
        ] {
            check(
                &[&format!("{pod}/0123456789abcdef"), "kubepods/burstable/pod11111111-2222-3333-4444-555555555555"],
                UID,
                qos,
                &pod,
            );
        }
    }

    #[test]
    fn uid_given_in_underscore_form_maps_both_drivers() {
        let pod = format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice");
        check(&[&pod], UID_, QosClass::Burstable, &pod);
        let pod = format!("kubepods/burstable/pod{UID}");
        check(&[&pod], UID_, QosClass::Burstable, &pod);
    }

    #[test]
    fn root_may_be_the_kubepods_directory_itself() {
        let t = TempDir::new("root");
        let pod =
            t.mk(&format!("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-1.scope"));
        let pod = pod.parent().unwrap().to_path_buf();
        assert_eq!(find_pod_cgroup(&t.0.join("kubepods.slice"), UID, QosClass::BestEffort), Some(pod));
        let pod = t.mk(&format!("kubepods/pod{UID}"));
        let other = "11111111-2222-3333-4444-555555555555";
        assert_eq!(find_pod_cgroup(&t.0.join("kubepods"), UID, QosClass::Guaranteed), Some(pod));
        assert_eq!(find_pod_cgroup(&t.0.join("kubepods"), other, QosClass::Guaranteed), None);
    }

    #[test]
    fn wrong_qos_guess_and_custom_cgroup_root_found_by_search() {
        // The QoS class says Burstable, the pod is BestEffort: found by the search.
        let pod = format!("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice");
        check(&[&format!("{pod}/cri-containerd-1.scope")], UID, QosClass::Burstable, &pod);
        // kind: kubelet --cgroup-root=/kubelet with the systemd driver.
        let pod = format!(
            "kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod{UID_}.slice"
        );
        check(&[&format!("{pod}/cri-containerd-1.scope")], UID, QosClass::Burstable, &pod);
    }

    #[test]
    fn missing_pod_and_lookalikes_are_not_matched() {
        let t = TempDir::new("missing");
        // Another pod whose UID merely contains ours as a prefix, and a directory outside the
        // kubelet's trees: neither is ours.
        t.mk(&format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}0.slice"));
        t.mk(&format!("system.slice/pod{UID}"));
        assert_eq!(find_pod_cgroup(&t.0, UID, QosClass::Burstable), None);
        assert_eq!(find_pod_cgroup(&t.0, "", QosClass::Burstable), None);
        assert_eq!(find_pod_cgroup(&t.0.join("does-not-exist"), UID, QosClass::Burstable), None);
    }

    #[test]
    fn kubelet_root_detection_and_pod_dirs() {
        let t = TempDir::new("detect");
        t.mk("system.slice/containerd.service");
        // kind: kubelet.slice/kubelet-kubepods.slice
        let kind = t.mk("kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice");
        let root = detect_root(&t.0).unwrap();
        assert_eq!(root, KubeletRoot { dir: kind.parent().unwrap().to_path_buf(), driver: Driver::Systemd });
        let dirs = root.pod_dirs(UID);
        assert_eq!(
            dirs[2],
            root.dir.join(format!("kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice"))
        );
        fs::create_dir_all(&dirs[2]).unwrap();
        assert_eq!(root.scan(), vec![(UID.to_string(), dirs[2].clone())]);
        // systemd wins over a stray cgroupfs tree; cgroupfs when it is the only one.
        t.mk("kubepods.slice");
        assert_eq!(detect_root(&t.0).unwrap().dir, t.0.join("kubepods.slice"));
        let t2 = TempDir::new("detect2");
        t2.mk("kubepods/burstable");
        let r = detect_root(&t2.0).unwrap();
        assert_eq!(r.driver, Driver::Cgroupfs);
        assert_eq!(r.pod_dirs(UID_)[1], t2.0.join(format!("kubepods/burstable/pod{UID}")));
        // Deeper custom roots are found by the bounded search; nothing at all is None.
        let t3 = TempDir::new("detect3");
        let deep = t3.mk("custom/nodes/kubepods.slice");
        assert_eq!(detect_root(&t3.0).unwrap().dir, deep);
        assert_eq!(detect_root(&TempDir::new("detect4").0), None);
    }

    #[test]
    fn pod_uids_from_directory_names() {
        assert_eq!(pod_uid_of(&format!("kubepods-burstable-pod{UID_}.slice")).as_deref(), Some(UID));
        assert_eq!(pod_uid_of(&format!("kubepods-pod{UID_}.slice")).as_deref(), Some(UID));
        assert_eq!(pod_uid_of(&format!("kubelet-kubepods-besteffort-pod{UID_}.slice")).as_deref(), Some(UID));
        assert_eq!(pod_uid_of(&format!("pod{UID}")).as_deref(), Some(UID));
        assert_eq!(pod_uid_of("kubepods-burstable.slice"), None);
        assert_eq!(pod_uid_of("cri-containerd-0123abcd.scope"), None);
        assert_eq!(pod_uid_of("podcast"), None);
        // A static pod: the manifest hash is its UID.
        let hash = "6b1f0e8b2a7c4d9e8f00112233445566";
        assert_eq!(pod_uid_of(&format!("kubepods-besteffort-pod{hash}.slice")).as_deref(), Some(hash));
        assert_eq!(pod_uid_of(&format!("pod{}", hash.to_uppercase())).as_deref(), Some(hash));
        assert_eq!(pod_uid_of(&format!("pod{hash}0")), None);
        assert_eq!(pod_uid_of("pod6b1f0e8b2a7c4d9e8f0011223344556g"), None);
    }

    #[test]
    fn candidates_are_the_documented_paths() {
        let c = candidates(Path::new("/sys/fs/cgroup"), UID, QosClass::Guaranteed);
        assert_eq!(
            c,
            vec![
                PathBuf::from(format!("/sys/fs/cgroup/kubepods.slice/kubepods-pod{UID_}.slice")),
                PathBuf::from(format!("/sys/fs/cgroup/kubepods/pod{UID}")),
            ]
        );
    }
}
