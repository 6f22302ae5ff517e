//! Removing blobs that nothing in the index reaches.
//!
//! Everything is worked out first ([`Layout::gc_plan`]): the tags to drop,
//! every blob still reachable from any index entry, whatever its media type
//! (image manifests, indexes, artifact manifests, subjects), and the blobs
//! to delete; only a plan made without error is applied
//! ([`Layout::gc_apply`]), so a layout gc cannot fully read is left as it was.
//! The caller holds the layout alone (`gc` takes it exclusively), so no
//! build has blobs written and not yet tagged.

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;

use oci_spec::image::Descriptor;

use super::image::{kind, Kind};
use super::index::ref_name;
use super::{sync_dir, Layout, LayoutError, Result, TEMP_PREFIX};

/// What [`Layout::gc_apply`] removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcStats {
    pub tags: usize,
    pub blobs: usize,
    pub bytes: u64,
    pub temp_files: usize,
}

/// What a gc will do, checked before anything is removed.
#[derive(Debug)]
pub struct GcPlan {
    remove_tags: Vec<String>,
    /// The index entries that stay.
    pub kept: Vec<Descriptor>,
    /// Unreachable blobs: path, digest, size.
    blobs: Vec<(PathBuf, String, u64)>,
    temp_files: Vec<PathBuf>,
}

impl Layout {
    /// Every blob reachable from `roots`. Descriptors are found generically:
    /// any object with a media type, digest and size in a JSON blob (a
    /// manifest's config, layers and subject, an index's manifests, an
    /// artifact's blobs) is followed, and a JSON blob is read for more. A
    /// reachable manifest or index that is missing or corrupt is an error,
    /// so that gc never deletes on a partial view.
    fn reachable_from(&self, roots: Vec<Descriptor>) -> Result<BTreeSet<String>> {
        let mut reached = BTreeSet::new();
        let mut todo = roots;
        while let Some(desc) = todo.pop() {
            if !reached.insert(desc.digest().to_string()) {
                continue;
            }
            if !desc.media_type().to_string().ends_with("json") {
                continue;
            }
            let parsed = self.read_blob(&desc).and_then(|bytes| {
                serde_json::from_slice::<serde_json::Value>(&bytes).map_err(|e| {
                    LayoutError::Invalid {
                        what: format!("{} {}", desc.media_type(), desc.digest()),
                        message: e.to_string(),
                    }
                })
            });
            match parsed {
                Ok(value) => descriptors_in(&value, &mut todo),
                // Other JSON blobs (configs, an artifact's JSON payload) may
                // hold descriptors too, but need not be there or parse.
                Err(e) if kind(desc.media_type()) == Kind::Other => {
                    tracing::debug!(blob = %desc.digest(), "not followed: {e}");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(reached)
    }

    /// Work out a gc that drops `remove_tags` and keeps every blob that
    /// the remaining index entries or `extra_roots` (images still in use
    /// though untagged) reach. Nothing is changed.
    pub fn gc_plan(&self, remove_tags: &[String], extra_roots: &[Descriptor]) -> Result<GcPlan> {
        let kept: Vec<Descriptor> = self
            .index()?
            .manifests()
            .iter()
            .filter(|d| ref_name(d).is_none_or(|n| !remove_tags.iter().any(|t| t == n)))
            .cloned()
            .collect();
        let mut roots = kept.clone();
        roots.extend(extra_roots.iter().cloned());
        let reached = self.reachable_from(roots)?;
        let mut blobs = Vec::new();
        let blobs_root = self.root.join("blobs");
        for algo in read_dir(&blobs_root)? {
            if !algo.is_dir() {
                continue;
            }
            let algo_name = file_name(&algo);
            for blob in read_dir(&algo)? {
                let digest = format!("{algo_name}:{}", file_name(&blob));
                if !reached.contains(&digest) {
                    let size = fs::symlink_metadata(&blob).map_or(0, |m| m.len());
                    blobs.push((blob, digest, size));
                }
            }
        }
        let temp_files = read_dir(&self.root)?
            .into_iter()
            .filter(|p| file_name(p).starts_with(TEMP_PREFIX))
            .collect();
        Ok(GcPlan {
            remove_tags: remove_tags.to_vec(),
            kept,
            blobs,
            temp_files,
        })
    }

    /// Carry out a plan from [`Layout::gc_plan`]: the index first, so that
    /// no tag ever names a deleted blob.
    pub fn gc_apply(&self, plan: GcPlan) -> Result<GcStats> {
        let mut stats = GcStats::default();
        if !plan.remove_tags.is_empty() {
            self.remove_tags(&plan.remove_tags)?;
            stats.tags = plan.remove_tags.len();
        }
        let mut dirs = BTreeSet::new();
        for (path, digest, size) in plan.blobs {
            fs::remove_file(&path).map_err(LayoutError::io("remove", &path))?;
            tracing::debug!(blob = %digest, bytes = size, "removed unreachable blob");
            stats.blobs += 1;
            stats.bytes += size;
            dirs.extend(path.parent().map(PathBuf::from));
        }
        for dir in dirs {
            sync_dir(&dir)?;
        }
        for path in plan.temp_files {
            fs::remove_file(&path).map_err(LayoutError::io("remove", &path))?;
            stats.temp_files += 1;
        }
        tracing::info!(
            layout = %self.root.display(),
            tags = stats.tags,
            blobs = stats.blobs,
            bytes = stats.bytes,
            temp_files = stats.temp_files,
            "garbage collected"
        );
        Ok(stats)
    }

    /// Remove every blob the index does not reach, and temp files left by killed runs.
    #[cfg(test)]
    pub fn gc(&self) -> Result<GcStats> {
        self.gc_apply(self.gc_plan(&[], &[])?)
    }
}

/// Every descriptor anywhere in a JSON document.
fn descriptors_in(value: &serde_json::Value, out: &mut Vec<Descriptor>) {
    match value {
        serde_json::Value::Object(map) => {
            let looks_like_one = ["mediaType", "digest", "size"]
                .iter()
                .all(|k| map.contains_key(*k));
            if looks_like_one {
                // oci-spec checks the digest's form: a hostile document
                // cannot name a path outside blobs/.
                if let Ok(desc) = serde_json::from_value::<Descriptor>(value.clone()) {
                    out.push(desc);
                }
            }
            map.values().for_each(|v| descriptors_in(v, out));
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| descriptors_in(v, out)),
        _ => {}
    }
}

fn read_dir(dir: &std::path::Path) -> Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for entry in fs::read_dir(dir).map_err(LayoutError::io("read directory", dir))? {
        paths.push(
            entry
                .map_err(LayoutError::io("read directory", dir))?
                .path(),
        );
    }
    Ok(paths)
}

fn file_name(path: &std::path::Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::image::MediaType;
    use std::collections::BTreeMap;
    use std::io::Write;

    #[test]
    fn descriptors_are_found_wherever_a_document_holds_them() {
        let d = |n: u8| {
            serde_json::json!({"mediaType": "x/y", "size": 1,
                "digest": format!("sha256:{}", format!("{n:02x}").repeat(32))})
        };
        let doc = serde_json::json!({
            "config": d(1), "layers": [d(2)], "subject": d(3), "blobs": [d(4)],
            "manifests": [d(5)], "annotations": {"digest": "not one"},
            "bad": {"mediaType": "x/y", "size": 1, "digest": "sha256:../../etc"},
        });
        let mut found = Vec::new();
        descriptors_in(&doc, &mut found);
        let mut sizes: Vec<String> = found
            .iter()
            .map(|d| d.digest().to_string()[7..9].to_string())
            .collect();
        sizes.sort();
        assert_eq!(sizes, ["01", "02", "03", "04", "05"]);
    }

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
