//! The definitions of the appliance's views, kept beside the engine's data.
//!
//! The engine stores a view's versions by revision name only: the closures of a `ViewDef` cannot
//! be written to disk. The appliance's views are data (`ViewSpec`), so it keeps each version's
//! spec in `DIR/serve/views/<name>.json` (written atomically) and re-creates every view at start:
//! the version that was served resumes from its checkpoints, whether the view came from the
//! config file or over HTTP.
//!
//! Files go through the engine's storage seam (`Disk`), like the engine's own metadata; one lock
//! serializes the read-modify-write of a view's file (two HTTP requests on one view at once).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use kappa_engine::storage::io::Disk;
use serde::{Deserialize, Serialize};

use super::spec::ViewSpec;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StoredSpecs {
    pub format: u32,
    pub name: String,
    /// Version number -> its definition.
    pub versions: BTreeMap<u32, ViewSpec>,
    /// Versions a rollback moved away from: not resumed at start (a newer version that is not
    /// in here was a rebuild in progress, and is).
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub rolled_back: std::collections::BTreeSet<u32>,
}

/// `DIR/serve/views`.
#[derive(Debug, Clone)]
pub struct ViewStore {
    dir: PathBuf,
    disk: Disk,
    lock: Arc<Mutex<()>>,
}

impl ViewStore {
    pub fn new(data_dir: &Path, disk: Disk) -> ViewStore {
        ViewStore {
            dir: data_dir.join("serve").join("views"),
            disk,
            lock: Arc::new(Mutex::new(())),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    /// Every stored view, by name.
    pub fn list(&self) -> anyhow::Result<BTreeMap<String, StoredSpecs>> {
        let mut out = BTreeMap::new();
        let entries = match self.disk.list_dir_blocking(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.is_not_found() => return Ok(out),
            Err(e) => return Err(e).with_context(|| format!("listing {}", self.dir.display())),
        };
        for entry in entries {
            let path = self.dir.join(&entry.name);
            if entry.is_dir || path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let bytes = self
                .disk
                .read_file_blocking(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let specs: StoredSpecs = serde_json::from_slice(&bytes)
                .with_context(|| format!("view definitions in {}", path.display()))?;
            out.insert(specs.name.clone(), specs);
        }
        Ok(out)
    }

    pub fn get(&self, name: &str) -> anyhow::Result<Option<StoredSpecs>> {
        match self.disk.read_file_blocking(&self.path(name)) {
            Ok(bytes) => {
                Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
                    format!("view definitions in {}", self.path(name).display())
                })?))
            }
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", self.path(name).display())),
        }
    }

    /// Records the spec of one version (temp file, fsync, rename, fsync dir).
    pub fn put(&self, name: &str, version: u32, spec: &ViewSpec) -> anyhow::Result<()> {
        let _lock = self.lock();
        let mut specs = self.get(name)?.unwrap_or_else(|| StoredSpecs {
            format: 1,
            name: name.to_string(),
            versions: BTreeMap::new(),
            rolled_back: Default::default(),
        });
        specs.versions.insert(version, spec.clone());
        self.write(&specs)
    }

    /// Records a rollback to `served`: the versions above it are not resumed at start.
    pub fn rolled_back_to(&self, name: &str, served: u32) -> anyhow::Result<()> {
        if let Some(mut specs) = self.get(name)? {
            let above: Vec<u32> = specs.versions.range(served + 1..).map(|(v, _)| *v).collect();
            specs.rolled_back.extend(above);
            // Serving one of them again (a roll forward) makes it resumable again.
            specs.rolled_back.remove(&served);
            self.write(&specs)?;
        }
        Ok(())
    }

    /// Forgets one version's spec.
    pub fn remove_version(&self, name: &str, version: u32) -> anyhow::Result<()> {
        let _lock = self.lock();
        if let Some(mut specs) = self.get(name)? {
            specs.versions.remove(&version);
            specs.rolled_back.remove(&version);
            self.write(&specs)?;
        }
        Ok(())
    }

    /// Forgets a view.
    pub fn remove(&self, name: &str) -> anyhow::Result<()> {
        let _lock = self.lock();
        match self.disk.remove_file_blocking(&self.path(name)) {
            Ok(()) => Ok(self.disk.sync_dir_blocking(&self.dir)?),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing {}", self.path(name).display())),
        }
    }

    fn write(&self, specs: &StoredSpecs) -> anyhow::Result<()> {
        self.disk
            .create_dir_all_blocking(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let bytes = serde_json::to_vec_pretty(specs)?;
        self.disk.write_file_atomic_blocking(&self.path(&specs.name), &bytes)?;
        Ok(())
    }
}
