//! Enrolment: pod cgroup directories as the kubelet creates them (inotify on the kubelet's pod
//! tree, via `notify`), so a pod is mapped to its policy within milliseconds of its cgroup
//! appearing — before its containers run.
//!
//! Watched (non-recursively): the kubelet root and its QoS directories (`burstable`,
//! `besteffort`); a QoS directory created later is added when it appears. Only pod-level
//! directories (named after a pod UID) are reported; container scopes below them are covered by
//! the kernel's ancestor walk.

use std::path::{Path, PathBuf};

use notify::{EventKind, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

use super::cgroup::{KubeletRoot, pod_uid_of};

/// A pod directory appeared (or went).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CgroupEvent {
    Created { uid: String, dir: PathBuf },
    Removed { uid: String, dir: PathBuf },
}

/// The running watcher; dropping it stops the watch.
pub struct CgroupWatcher {
    _watcher: std::sync::Arc<std::sync::Mutex<notify::RecommendedWatcher>>,
    adder: tokio::task::JoinHandle<()>,
}

impl Drop for CgroupWatcher {
    fn drop(&mut self) {
        self.adder.abort();
    }
}

/// Watch `root`; events arrive on the returned receiver.
pub fn watch(root: &KubeletRoot) -> notify::Result<(CgroupWatcher, mpsc::UnboundedReceiver<CgroupEvent>)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let parents = root.parent_dirs();
    let (qtx, mut qrx) = mpsc::unbounded_channel::<PathBuf>();
    let qos_dirs = parents.clone();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        let Ok(ev) = ev else { return };
        for path in &ev.paths {
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
            match (&ev.kind, pod_uid_of(name)) {
                (EventKind::Create(_), Some(uid)) => {
                    let _ = tx.send(CgroupEvent::Created { uid, dir: path.clone() });
                }
                (EventKind::Remove(_), Some(uid)) => {
                    let _ = tx.send(CgroupEvent::Removed { uid, dir: path.clone() });
                }
                // A QoS directory appeared: watch it too.
                (EventKind::Create(_), None) if qos_dirs.iter().any(|p| p == path) => {
                    let _ = qtx.send(path.clone());
                }
                _ => {}
            }
        }
    })?;
    for p in &parents {
        if p.is_dir() {
            watcher.watch(p, RecursiveMode::NonRecursive)?;
        }
    }
    let watcher = std::sync::Arc::new(std::sync::Mutex::new(watcher));
    let w = watcher.clone();
    let adder = tokio::spawn(async move {
        while let Some(p) = qrx.recv().await {
            if let Ok(mut w) = w.lock()
                && let Err(e) = w.watch(&p, RecursiveMode::NonRecursive)
            {
                tracing::warn!(dir = %p.display(), "cannot watch the new QoS cgroup directory: {e}");
            }
        }
    });
    Ok((CgroupWatcher { _watcher: watcher, adder }, rx))
}

/// Does `dir` (a pod directory) still exist?
pub fn exists(dir: &Path) -> bool {
    dir.is_dir()
}
