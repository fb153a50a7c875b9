//! The definitions of the appliance's views, kept beside the engine's data.
//!
//! The engine stores a view's versions by revision name only: the closures of a `ViewDef` cannot
//! be written to disk. The appliance's views are data (`ViewSpec`), so it keeps each version's
//! spec in `DIR/serve/views/<name>.json` (written atomically) and re-creates every view at start:
//! the version that was served resumes from its checkpoints, whether the view came from the
//! config file or over HTTP.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::spec::ViewSpec;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StoredSpecs {
    pub format: u32,
    pub name: String,
    /// Version number -> its definition.
    pub versions: BTreeMap<u32, ViewSpec>,
}

/// `DIR/serve/views`.
#[derive(Debug, Clone)]
pub struct ViewStore {
    dir: PathBuf,
}

impl ViewStore {
    pub fn new(data_dir: &Path) -> ViewStore {
        ViewStore { dir: data_dir.join("serve").join("views") }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    /// Every stored view, by name.
    pub fn list(&self) -> anyhow::Result<BTreeMap<String, StoredSpecs>> {
        let mut out = BTreeMap::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e).with_context(|| format!("listing {}", self.dir.display())),
        };
        for entry in entries {
            let path = entry?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let bytes =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let specs: StoredSpecs = serde_json::from_slice(&bytes)
                .with_context(|| format!("view definitions in {}", path.display()))?;
            out.insert(specs.name.clone(), specs);
        }
        Ok(out)
    }

    pub fn get(&self, name: &str) -> anyhow::Result<Option<StoredSpecs>> {
        match std::fs::read(self.path(name)) {
            Ok(bytes) => {
                Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
                    format!("view definitions in {}", self.path(name).display())
                })?))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", self.path(name).display())),
        }
    }

    /// Records the spec of one version (temp file, fsync, rename, fsync dir).
    pub fn put(&self, name: &str, version: u32, spec: &ViewSpec) -> anyhow::Result<()> {
        let mut specs = self.get(name)?.unwrap_or_else(|| StoredSpecs {
            format: 1,
            name: name.to_string(),
            versions: BTreeMap::new(),
        });
        specs.versions.insert(version, spec.clone());
        self.write(&specs)
    }

    /// Forgets one version's spec.
    pub fn remove_version(&self, name: &str, version: u32) -> anyhow::Result<()> {
        if let Some(mut specs) = self.get(name)? {
            specs.versions.remove(&version);
            self.write(&specs)?;
        }
        Ok(())
    }

    /// Forgets a view.
    pub fn remove(&self, name: &str) -> anyhow::Result<()> {
        match std::fs::remove_file(self.path(name)) {
            Ok(()) => Ok(kappa_engine::storage::io::Disk::Dma.sync_dir_blocking(&self.dir)?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing {}", self.path(name).display())),
        }
    }

    fn write(&self, specs: &StoredSpecs) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let bytes = serde_json::to_vec_pretty(specs)?;
        kappa_engine::storage::io::write_file_atomic(&self.path(&specs.name), &bytes)?;
        Ok(())
    }
}
