//! Watching registry files and directories (inotify via `notify`) so edits reload the registry.

use std::path::{Path, PathBuf};

use notify::{Event, EventKind, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

/// Keeps the watch alive; changes arrive on the receiver (one message per relevant event, to be
/// debounced by the consumer).
pub struct RegistryWatch {
    _watcher: notify::RecommendedWatcher,
}

/// Watch `paths`: a directory recursively; a file through its parent directory (editors and
/// `kubectl cp` replace files by rename), filtered to that file.
pub fn watch(paths: &[PathBuf]) -> notify::Result<(RegistryWatch, mpsc::UnboundedReceiver<PathBuf>)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let files: Vec<PathBuf> = paths.iter().filter(|p| !p.is_dir()).map(|p| absolute(p)).collect();
    let dirs: Vec<PathBuf> = paths.iter().filter(|p| p.is_dir()).map(|p| absolute(p)).collect();
    let (files2, dirs2) = (files.clone(), dirs.clone());
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<Event>| {
        let Ok(ev) = res else { return };
        if matches!(ev.kind, EventKind::Access(_)) {
            return;
        }
        for p in ev.paths {
            let relevant = files2.contains(&p) || dirs2.iter().any(|d| p.starts_with(d));
            if relevant {
                let _ = tx.send(p);
            }
        }
    })?;
    for d in &dirs {
        watcher.watch(d, RecursiveMode::Recursive)?;
    }
    let mut parents: Vec<PathBuf> = files.iter().filter_map(|f| f.parent().map(Path::to_path_buf)).collect();
    parents.sort();
    parents.dedup();
    for p in &parents {
        watcher.watch(p, RecursiveMode::NonRecursive)?;
    }
    Ok((RegistryWatch { _watcher: watcher }, rx))
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}
