//! Standalone mode's source: a folder of manifests, re-read whenever it changes (inotify
//! through `notify`, plus a slow poll as a safety net). A file that fails to parse keeps its
//! last good objects; an object that fails to decode keeps its last good version.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::manifest::{decode_file, Decoded};
use crate::store::{Kind, Object, StoreEvent};

/// How long to wait after a change event for the burst of events an editor or `kubectl`
/// produces to settle before re-reading.
const SETTLE: Duration = Duration::from_millis(30);
/// Re-read the folder this often even without events (network filesystems, missed events).
const POLL: Duration = Duration::from_secs(2);
/// A file whose modification time is this close to (or after) the moment it was last read
/// may have changed again within the same timestamp tick: it is read again, never trusted
/// on its metadata alone (git's "racily clean" rule).
const RACY: Duration = Duration::from_secs(1);

/// What `stat` says of a file: unchanged stamp, unchanged content (see [`RACY`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(meta);
        #[cfg(not(unix))]
        let inode = 0;
        Stamp {
            len: meta.len(),
            modified: meta.modified().ok(),
            inode,
        }
    }
}

#[derive(Debug, Default)]
struct FileState {
    content_hash: u64,
    /// The file's stamp when it was last read, and when that was.
    stamp: Option<(Stamp, SystemTime)>,
    /// Last good objects of this file, by kind and key.
    objects: BTreeMap<(Kind, (String, String)), Object>,
}

/// The folder and what each of its files last yielded.
#[derive(Debug)]
pub struct ManifestDir {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
    /// Last problem reported per file, so an unchanged broken file is not logged every poll.
    reported: HashMap<PathBuf, u64>,
}

/// Names an editor or a tool writes while saving, and hidden files: never read.
pub fn is_ignored_name(name: &str) -> bool {
    name.starts_with('.')
        || name.ends_with('~')
        || name.ends_with(".swp")
        || name.ends_with(".swx")
        || name.ends_with(".tmp")
}

fn manifest_kind(path: &Path) -> Option<bool> {
    let name = path.file_name()?.to_str()?;
    if is_ignored_name(name) {
        return None;
    }
    match path.extension()?.to_str()? {
        "yaml" | "yml" => Some(false),
        "json" => Some(true),
        _ => None,
    }
}

fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut hasher);
    hasher.finish()
}

impl ManifestDir {
    pub fn new(dir: impl Into<PathBuf>) -> ManifestDir {
        ManifestDir {
            dir: dir.into(),
            files: BTreeMap::new(),
            reported: HashMap::new(),
        }
    }

    /// Re-read the folder. Returns true when any file's objects changed.
    pub fn rescan(&mut self) -> std::io::Result<bool> {
        // PERF: a set, not a Vec: `retain` below looked every known file up in the list of
        // files seen, O(files²) Path comparisons (perf: 80 % of samples in `Path::eq`). With
        // the 5 000 files of benches/propagation.sh the first configuration was served after
        // 6.5 s (4.8 s of it this rescan); with the set, after 0.75 s.
        let mut seen = HashSet::new();
        let mut changed = false;
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let Some(json) = manifest_kind(&path) else {
                continue;
            };
            // Follows symlinks, as ConfigMap volume mounts use them.
            let stamp = match std::fs::metadata(&path) {
                Ok(meta) if meta.is_file() => Stamp::of(&meta),
                Ok(_) => continue,
                Err(_) => {
                    // Vanished between listing and reading: as below.
                    if self.files.contains_key(&path) {
                        seen.insert(path);
                    }
                    continue;
                }
            };
            // PERF: a file whose stamp has not changed since it was read is not read again.
            // Re-reading and hashing all 5 000 files of benches/propagation.sh took 100-360 ms
            // per change under load. With this and the access-event filter in `run`, change
            // to visible went from p50/p99 640/1 706 ms to 438/810 ms.
            if let Some((last, read_at)) = self.files.get(&path).and_then(|s| s.stamp) {
                let settled = last
                    .modified
                    .and_then(|m| m.checked_add(RACY))
                    .is_some_and(|m| m < read_at);
                if last == stamp && settled {
                    seen.insert(path);
                    continue;
                }
            }
            let read_at = SystemTime::now();
            let content = match std::fs::read(&path) {
                Ok(content) => content,
                Err(e) => {
                    // Vanished between listing and reading (an atomic rename in progress):
                    // the next event or poll reads it again.
                    tracing::debug!(file = %path.display(), error = %e, "manifest not readable yet");
                    if self.files.contains_key(&path) {
                        seen.insert(path);
                    }
                    continue;
                }
            };
            seen.insert(path.clone());
            let hash = hash_bytes(&content);
            if self.files.get(&path).map(|s| s.content_hash) != Some(hash) {
                changed |= self.reload_file(&path, &content, json, hash);
            }
            // reload_file leaves an entry for the path, good or broken.
            if let Some(state) = self.files.get_mut(&path) {
                state.stamp = Some((stamp, read_at));
            }
        }
        let before = self.files.len();
        self.files.retain(|path, _| seen.contains(path));
        self.reported.retain(|path, _| seen.contains(path));
        if self.files.len() != before {
            changed = true;
        }
        Ok(changed)
    }

    fn display_name(&self, path: &Path) -> String {
        path.display().to_string()
    }

    fn reload_file(&mut self, path: &Path, content: &[u8], json: bool, hash: u64) -> bool {
        let file = self.display_name(path);
        let decoded: Decoded = match decode_file(&file, content, json) {
            Ok(decoded) => decoded,
            Err(e) => {
                if self.reported.insert(path.to_path_buf(), hash) != Some(hash) {
                    let kept = self.files.get(path).map_or(0, |s| s.objects.len());
                    tracing::warn!(file = %file, "{e}; keeping the {kept} objects last read from this file");
                }
                // Remember the hash so the same broken content is not re-parsed every poll,
                // but keep the last good objects.
                let state = self.files.entry(path.to_path_buf()).or_default();
                state.content_hash = hash;
                return false;
            }
        };
        self.reported.remove(path);
        for skipped in &decoded.skipped {
            tracing::info!(file = %file, "skipping {skipped}: not a kind Sluice reads");
        }
        let previous = self.files.remove(path).unwrap_or_default();
        let mut objects = BTreeMap::new();
        for object in decoded.objects {
            objects.insert((object.kind(), object.key()), object);
        }
        for (kind, namespace, name, diagnostic) in decoded.failed {
            let key = (kind, (namespace, name));
            match previous.objects.get(&key) {
                Some(last_good) => {
                    tracing::warn!("{diagnostic}; keeping its last good version");
                    objects.insert(key, last_good.clone());
                }
                None => tracing::warn!("{diagnostic}; object skipped"),
            }
        }
        let changed = objects.len() != previous.objects.len()
            || objects
                .iter()
                .zip(previous.objects.iter())
                .any(|(a, b)| a.0 != b.0 || !same_object(a.1, b.1));
        self.files.insert(
            path.to_path_buf(),
            FileState {
                content_hash: hash,
                stamp: None,
                objects,
            },
        );
        changed
    }

    /// Every object with the file it came from. When two files define the same object the
    /// later file (by name) wins, and the store sees one.
    pub fn objects(&self) -> Vec<(Object, Option<Arc<str>>)> {
        let mut out = Vec::new();
        for (path, state) in &self.files {
            let origin: Arc<str> = Arc::from(self.display_name(path));
            for object in state.objects.values() {
                out.push((object.clone(), Some(origin.clone())));
            }
        }
        out
    }
}

fn same_object(a: &Object, b: &Object) -> bool {
    match (a, b) {
        (Object::IngressClass(a), Object::IngressClass(b)) => a == b,
        (Object::Ingress(a), Object::Ingress(b)) => a == b,
        (Object::Service(a), Object::Service(b)) => a == b,
        (Object::EndpointSlice(a), Object::EndpointSlice(b)) => a == b,
        (Object::Secret(a), Object::Secret(b)) => a == b,
        (Object::ConfigMap(a), Object::ConfigMap(b)) => a == b,
        _ => false,
    }
}

/// Read the folder once, send its objects, then watch it and send a full replacement after
/// every change. Ends when the receiver is dropped.
pub async fn run(mut dir: ManifestDir, tx: mpsc::Sender<StoreEvent>) {
    let (wake_tx, mut wake_rx) = mpsc::channel::<()>(1);
    let watcher = {
        let wake_tx = wake_tx.clone();
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            // PERF: reading the folder raises inotify open/access events of its own; waking
            // on those re-read it in a loop (about 56 rescans a second with one file, ~20% of
            // a core). Only changes wake the reader.
            if event.is_ok_and(|event| !event.kind.is_access()) {
                let _ = wake_tx.try_send(());
            }
        })
    };
    let _watcher = match watcher {
        Ok(mut watcher) => match watcher.watch(&dir.dir, RecursiveMode::NonRecursive) {
            Ok(()) => Some(watcher),
            Err(e) => {
                tracing::warn!(dir = %dir.dir.display(), error = %e, "cannot watch the manifests folder; polling every {POLL:?}");
                None
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "no file watcher available; polling every {POLL:?}");
            None
        }
    };
    let mut first = true;
    loop {
        // PERF: reading and decoding the folder is blocking file I/O and CPU: off the request
        // threads, as translation is. On the runtime (one worker thread) it stalled every
        // request for as long as each rescan took, after every change and every POLL.
        // benches/propagation.sh, 5 000 Ingresses, wrk -c20 during changes: 41-262 req/s
        // before, 11 400-15 200 after (with the set above).
        let started = Instant::now();
        let send_all = first;
        let scan = tokio::task::spawn_blocking(move || {
            let result = dir
                .rescan()
                .map(|changed| (changed || send_all).then(|| dir.objects()));
            (dir, result)
        })
        .await;
        let result = match scan {
            Ok((back, result)) => {
                dir = back;
                result
            }
            Err(e) => {
                // A bug while decoding: the store keeps the last objects sent.
                tracing::error!(error = %e, "reading the manifests folder failed; no longer watching it");
                return;
            }
        };
        tracing::debug!(
            took_ms = started.elapsed().as_millis() as u64,
            "manifests folder read"
        );
        match result {
            Ok(Some(objects)) => {
                first = false;
                if tx.send(StoreEvent::Replace(objects)).await.is_err() {
                    return;
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(dir = %dir.dir.display(), error = %e, "cannot read the manifests folder; keeping the last good objects");
                if first {
                    first = false;
                    // Publish an empty configuration so /healthz can report ready and
                    // requests get the default backend rather than hanging.
                    if tx.send(StoreEvent::Replace(Vec::new())).await.is_err() {
                        return;
                    }
                }
            }
        }
        tokio::select! {
            _ = wake_rx.recv() => {
                tokio::time::sleep(SETTLE).await;
                while wake_rx.try_recv().is_ok() {}
            }
            _ = tokio::time::sleep(POLL) => {}
            _ = tx.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignored_names() {
        for name in [".hidden.yaml", "a.yaml~", "a.yaml.swp", "x.tmp", ".#a.yaml"] {
            assert!(is_ignored_name(name), "{name}");
        }
        assert!(!is_ignored_name("app.yaml"));
    }

    #[test]
    fn broken_file_keeps_last_good_objects_and_deleted_file_drops_them() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("svc.yaml");
        std::fs::write(
            &file,
            "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80}]}\n",
        )
        .unwrap();
        let mut manifests = ManifestDir::new(dir.path());
        assert!(manifests.rescan().unwrap());
        assert_eq!(manifests.objects().len(), 1);
        // Unchanged content: no change.
        assert!(!manifests.rescan().unwrap());
        // Broken YAML: the Service stays.
        std::fs::write(&file, "apiVersion: v1\nkind: [").unwrap();
        assert!(!manifests.rescan().unwrap());
        assert_eq!(manifests.objects().len(), 1);
        // A bad field in the same object keeps its last good version too.
        std::fs::write(
            &file,
            "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: eighty}]}\n",
        )
        .unwrap();
        manifests.rescan().unwrap();
        assert_eq!(manifests.objects().len(), 1);
        // Temp files are ignored.
        std::fs::write(dir.path().join(".svc.yaml.swp"), "garbage").unwrap();
        std::fs::write(dir.path().join("svc.yaml.tmp"), "garbage").unwrap();
        manifests.rescan().unwrap();
        assert_eq!(manifests.objects().len(), 1);
        std::fs::remove_file(&file).unwrap();
        assert!(manifests.rescan().unwrap());
        assert!(manifests.objects().is_empty());
    }

    /// A file rewritten in place with content of the same length, within the same
    /// timestamp tick as the previous read, is still read again: stamps are trusted only
    /// once the file's modification time is well before the read.
    #[test]
    fn same_size_rewrite_right_after_a_read_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("svc.yaml");
        std::fs::write(&file, service("aaaa")).unwrap();
        let mut manifests = ManifestDir::new(dir.path());
        assert!(manifests.rescan().unwrap());
        std::fs::write(&file, service("bbbb")).unwrap();
        assert!(manifests.rescan().unwrap(), "same-length rewrite missed");
        assert_eq!(manifests.objects()[0].0.key().1, "bbbb");
        // Once settled, an unchanged file is skipped on its stamp; a change of length,
        // time or inode (an atomic rename) is read.
        let old = SystemTime::now() - Duration::from_secs(10);
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert!(!manifests.rescan().unwrap());
        assert!(!manifests.rescan().unwrap());
        let staged = dir.path().join(".staged");
        std::fs::write(&staged, service("cccc")).unwrap();
        std::fs::rename(&staged, &file).unwrap();
        assert!(manifests.rescan().unwrap(), "rename into place missed");
        assert_eq!(manifests.objects()[0].0.key().1, "cccc");
    }

    fn service(name: &str) -> String {
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: bench}}\nspec: {{ports: [{{port: 80}}]}}\n")
    }

    /// A folder of thousands of files (one per app), unchanged, rescans to "no change". How
    /// fast is measured by benches/propagation.sh (a quadratic check once took seconds here).
    #[test]
    fn rescan_of_many_unchanged_files_reports_no_change() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..5000 {
            std::fs::write(
                dir.path().join(format!("app-{i:05}.yaml")),
                service(&format!("s{i}")),
            )
            .unwrap();
        }
        let mut manifests = ManifestDir::new(dir.path());
        assert!(manifests.rescan().unwrap());
        assert_eq!(manifests.objects().len(), 5000);
        assert!(!manifests.rescan().unwrap());
        std::fs::remove_file(dir.path().join("app-01234.yaml")).unwrap();
        assert!(manifests.rescan().unwrap());
        assert_eq!(manifests.objects().len(), 4999);
    }
}
