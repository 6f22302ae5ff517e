//! Removing blobs that no tag reaches.
//!
//! API: `Layout::reachable_blobs(&self) -> Result<BTreeSet<String>>`, `Layout::gc(&self) -> Result<GcStats>`
//! with `pub struct GcStats { pub blobs: usize, pub bytes: u64, pub temp_files: usize }`; also removes
//! stale temp files. The caller holds the layout's lock.

use std::collections::BTreeSet;
use std::fs;

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};

use super::image::{kind, Kind};
use super::{sync_dir, Layout, LayoutError, Result, TEMP_PREFIX};

/// What [`Layout::gc`] removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcStats {
    pub blobs: usize,
    pub bytes: u64,
    pub temp_files: usize,
}

impl Layout {
    /// Digests (`sha256:...`) of every blob the index reaches: manifests,
    /// configs, layers and nested indexes. A reachable index or manifest
    /// that is missing or corrupt is an error, so that gc never deletes on a
    /// partial view.
    pub fn reachable_blobs(&self) -> Result<BTreeSet<String>> {
        let mut reached = BTreeSet::new();
        let mut todo: Vec<Descriptor> = self.index()?.manifests().clone();
        while let Some(desc) = todo.pop() {
            if !reached.insert(desc.digest().to_string()) {
                continue;
            }
            match kind(desc.media_type()) {
                Kind::Index => {
                    let index: ImageIndex = self.read_json(&desc)?;
                    todo.extend(index.manifests().iter().cloned());
                }
                Kind::Manifest => {
                    let manifest: ImageManifest = self.read_json(&desc)?;
                    reached.insert(manifest.config().digest().to_string());
                    for layer in manifest.layers() {
                        reached.insert(layer.digest().to_string());
                    }
                }
                Kind::Other => {}
            }
        }
        Ok(reached)
    }

    /// Remove every blob no tag reaches, and temp files left by killed runs.
    pub fn gc(&self) -> Result<GcStats> {
        let reached = self.reachable_blobs()?;
        let mut stats = GcStats::default();
        let blobs_root = self.root.join("blobs");
        for algo in
            fs::read_dir(&blobs_root).map_err(LayoutError::io("read directory", &blobs_root))?
        {
            let algo = algo.map_err(LayoutError::io("read directory", &blobs_root))?;
            let dir = algo.path();
            if !dir.is_dir() {
                continue;
            }
            let algo_name = algo.file_name().to_string_lossy().into_owned();
            let mut removed_here = false;
            for blob in fs::read_dir(&dir).map_err(LayoutError::io("read directory", &dir))? {
                let blob = blob.map_err(LayoutError::io("read directory", &dir))?;
                let digest = format!("{algo_name}:{}", blob.file_name().to_string_lossy());
                if reached.contains(&digest) {
                    continue;
                }
                let path = blob.path();
                let size = blob.metadata().map(|m| m.len()).unwrap_or(0);
                fs::remove_file(&path).map_err(LayoutError::io("remove", &path))?;
                tracing::debug!(blob = %digest, bytes = size, "removed unreachable blob");
                stats.blobs += 1;
                stats.bytes += size;
                removed_here = true;
            }
            if removed_here {
                sync_dir(&dir)?;
            }
        }
        for entry in
            fs::read_dir(&self.root).map_err(LayoutError::io("read directory", &self.root))?
        {
            let entry = entry.map_err(LayoutError::io("read directory", &self.root))?;
            if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                let path = entry.path();
                fs::remove_file(&path).map_err(LayoutError::io("remove", &path))?;
                stats.temp_files += 1;
            }
        }
        tracing::info!(
            layout = %self.root.display(),
            blobs = stats.blobs,
            bytes = stats.bytes,
            temp_files = stats.temp_files,
            "garbage collected"
        );
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::image::MediaType;
    use std::collections::BTreeMap;
    use std::io::Write;

    #[test]
    fn gc_keeps_what_tags_reach_and_removes_the_rest() {
        let t = tempfile::tempdir().unwrap();
        let l = Layout::open_or_create(&t.path().join("oci")).unwrap();
        let mut w = l.blob_writer().unwrap();
        w.write_all(b"layer").unwrap();
        let layer = w.finish(MediaType::ImageLayerGzip).unwrap();
        let mut w = l.blob_writer().unwrap();
        w.write_all(b"orphan").unwrap();
        let orphan = w.finish(MediaType::ImageLayerGzip).unwrap();
        let config = super::super::image::tests::config(vec![]);
        let kept = l
            .write_image(&config, vec![layer.clone()], &BTreeMap::new())
            .unwrap();
        let dropped = l
            .write_image(
                &config,
                vec![],
                &[("x".to_string(), "y".to_string())].into(),
            )
            .unwrap();
        l.set_tags(&[
            ("kept".into(), kept.clone()),
            ("dropped".into(), dropped.clone()),
        ])
        .unwrap();
        l.remove_tags(&["dropped".to_string()]).unwrap();
        std::fs::write(l.root().join(format!("{TEMP_PREFIX}stale")), "x").unwrap();

        let stats = l.gc().unwrap();
        assert_eq!(stats.blobs, 2, "the orphan layer and the untagged manifest");
        assert_eq!(stats.temp_files, 1);
        assert!(!l.has_blob(orphan.digest().as_ref()));
        assert!(!l.has_blob(dropped.digest().as_ref()));
        assert!(l.has_blob(layer.digest().as_ref()));
        assert!(l.has_blob(kept.digest().as_ref()));
        l.image_by_tag("kept").unwrap();
        assert_eq!(l.gc().unwrap(), GcStats::default());
    }
}
