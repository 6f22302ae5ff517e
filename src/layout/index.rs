//! `index.json`: one manifest descriptor per tag, named by
//! `org.opencontainers.image.ref.name`.
//! Tags are listed sorted by name; setting several is one atomic rewrite.
//!
//! Several genoci processes may tag in one layout at once: every change is
//! a read-modify-write of the whole file under `index_lock`, and the file
//! is replaced by a rename, so readers need no lock and never see half an
//! index.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::time::Duration;

use oci_spec::image::{Descriptor, ImageIndex, MediaType};

use super::{canonical_json, Layout, LayoutError, Result, INDEX_FILE};

/// The annotation that names a tag.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

pub(crate) fn ref_name(desc: &Descriptor) -> Option<&str> {
    desc.annotations()
        .as_ref()
        .and_then(|a| a.get(REF_NAME))
        .map(String::as_str)
}

impl Layout {
    /// The layout's `index.json`.
    pub fn index(&self) -> Result<ImageIndex> {
        let path = self.root.join(INDEX_FILE);
        let bytes = fs::read(&path).map_err(LayoutError::io("read", &path))?;
        serde_json::from_slice(&bytes).map_err(|e| LayoutError::Invalid {
            what: path.display().to_string(),
            message: e.to_string(),
        })
    }

    pub(crate) fn write_index(&self, index: &ImageIndex) -> Result<()> {
        self.write_file_atomic(INDEX_FILE, &canonical_json(index)?)
    }

    /// Every tag with its manifest descriptor, sorted by name.
    pub fn tags(&self) -> Result<Vec<(String, Descriptor)>> {
        let mut tags: Vec<(String, Descriptor)> = self
            .index()?
            .manifests()
            .iter()
            .filter_map(|d| ref_name(d).map(|name| (name.to_string(), d.clone())))
            .collect();
        tags.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(tags)
    }

    /// The descriptor tagged `tag`, if any.
    pub fn resolve(&self, tag: &str) -> Result<Option<Descriptor>> {
        Ok(self
            .index()?
            .manifests()
            .iter()
            .find(|d| ref_name(d) == Some(tag))
            .cloned())
    }

    /// Point each tag at its descriptor, replacing what it named before, in
    /// one rewrite of the index.
    pub fn set_tags(&self, tags: &[(String, Descriptor)]) -> Result<()> {
        self.update_tags(|_| tags.to_vec()).map(drop)
    }

    /// [`set_tags`](Self::set_tags) with the tags `choose` picks from the
    /// names in the index at the moment of the write (the next free dated
    /// tag), so that a tag another process adds meanwhile is neither lost
    /// nor taken twice. Returns what was set.
    pub fn update_tags(
        &self,
        choose: impl FnOnce(&[String]) -> Vec<(String, Descriptor)>,
    ) -> Result<Vec<(String, Descriptor)>> {
        let _lock = index_lock(&self.root)?;
        let mut index = self.index()?;
        let existing: Vec<String> = index
            .manifests()
            .iter()
            .filter_map(|d| ref_name(d).map(str::to_string))
            .collect();
        let tags = choose(&existing);
        for (name, _) in &tags {
            check_tag(name)?;
        }
        let names: BTreeSet<&str> = tags.iter().map(|(n, _)| n.as_str()).collect();
        let mut manifests: Vec<Descriptor> = index
            .manifests()
            .iter()
            .filter(|d| ref_name(d).is_none_or(|n| !names.contains(n)))
            .cloned()
            .collect();
        for (name, desc) in &tags {
            let mut desc = desc.clone();
            let mut annotations = desc.annotations().clone().unwrap_or_default();
            annotations.insert(REF_NAME.to_string(), name.clone());
            desc.set_annotations(Some(annotations));
            manifests.retain(|d| ref_name(d) != Some(name));
            manifests.push(desc);
        }
        self.rewrite_index(&mut index, manifests)?;
        tracing::debug!(layout = %self.root.display(), tags = ?names, "tagged");
        Ok(tags)
    }

    /// Drop these tags (the blobs stay until `gc`); unknown names are ignored.
    pub fn remove_tags(&self, tags: &[String]) -> Result<()> {
        let _lock = index_lock(&self.root)?;
        let mut index = self.index()?;
        let manifests = index
            .manifests()
            .iter()
            .filter(|d| ref_name(d).is_none_or(|n| !tags.iter().any(|t| t == n)))
            .cloned()
            .collect();
        self.rewrite_index(&mut index, manifests)
    }

    /// Untagged entries (written by other tools) keep their order and come
    /// first; tags follow by name, so the same tags give the same index.
    fn rewrite_index(&self, index: &mut ImageIndex, mut manifests: Vec<Descriptor>) -> Result<()> {
        manifests.sort_by(|a, b| ref_name(a).cmp(&ref_name(b)));
        index.set_schema_version(2);
        index.set_media_type(Some(MediaType::ImageIndex));
        index.set_manifests(manifests);
        self.write_index(index)
    }
}

/// The lock around a read-modify-write of the index of the layout at
/// `root` (and around making a new layout there): a `flock` on the
/// layout's directory. It is held for as long as one rewrite takes, so a
/// wait is said only when a holder seems stuck.
pub(crate) fn index_lock(root: &Path) -> Result<crate::lock::Lock> {
    use crate::lock::{acquire, Mode, Subject, Wait};
    let subject = Subject {
        what: format!("the index of the layout {}", root.display()),
        why: "another genoci is writing it".to_string(),
    };
    let wait = Wait::Quietly(Duration::from_secs(1));
    Ok(acquire(root, Mode::Exclusive, wait, &subject)?)
}

/// The image-spec grammar of a ref name, as far as a file name and tools care:
/// no empty names, no whitespace or control characters.
fn check_tag(name: &str) -> Result<()> {
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(LayoutError::Invalid {
            what: format!("tag {name:?}"),
            message: "a tag is a non-empty name without spaces".to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(n: u8) -> Descriptor {
        Descriptor::new(
            MediaType::ImageManifest,
            u64::from(n),
            super::super::blobs::sha256_digest(&format!("{n:02x}").repeat(32)),
        )
    }

    #[test]
    fn tags_are_set_replaced_and_removed() {
        let t = tempfile::tempdir().unwrap();
        let l = Layout::open_or_create(&t.path().join("oci")).unwrap();
        l.set_tags(&[("b".into(), desc(1)), ("a".into(), desc(2))])
            .unwrap();
        let names: Vec<String> = l.tags().unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["a", "b"]);
        l.set_tags(&[("b".into(), desc(3))]).unwrap();
        let tags = l.tags().unwrap();
        assert_eq!(tags.len(), 2);
        let b = l.resolve("b").unwrap().unwrap();
        assert_eq!(b.digest(), desc(3).digest());
        assert_eq!(ref_name(&b), Some("b"));
        l.remove_tags(&["a".to_string(), "zzz".to_string()])
            .unwrap();
        assert!(l.resolve("a").unwrap().is_none());
        assert_eq!(l.tags().unwrap().len(), 1);

        let raw: serde_json::Value =
            serde_json::from_slice(&fs::read(l.root().join("index.json")).unwrap()).unwrap();
        assert_eq!(raw["schemaVersion"], 2);
        assert_eq!(raw["mediaType"], "application/vnd.oci.image.index.v1+json");
    }

    /// Each thread opens the layout on its own, as another process would:
    /// the index lock is a `flock`, which threads take from one another too.
    #[test]
    fn tags_set_at_once_by_many_writers_are_all_kept() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("oci");
        Layout::open_or_create(&root).unwrap();
        std::thread::scope(|s| {
            for w in 0..8u8 {
                let root = &root;
                s.spawn(move || {
                    let l = Layout::open(root).unwrap();
                    for n in 0..25u8 {
                        l.update_tags(|existing| {
                            assert!(existing.len() < 200);
                            vec![(format!("w{w}-{n}"), desc(n))]
                        })
                        .unwrap();
                    }
                });
            }
        });
        let l = Layout::open(&root).unwrap();
        assert_eq!(l.tags().unwrap().len(), 8 * 25);
    }

    #[test]
    fn a_layout_made_by_several_writers_at_once_is_one_layout() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("oci");
        std::thread::scope(|s| {
            for w in 0..8u8 {
                let root = &root;
                s.spawn(move || {
                    let l = Layout::open_or_create(root).unwrap();
                    l.set_tags(&[(format!("w{w}"), desc(w))]).unwrap();
                });
            }
        });
        let l = Layout::open(&root).unwrap();
        assert_eq!(l.tags().unwrap().len(), 8);
    }

    #[test]
    fn bad_tag_names_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let l = Layout::open_or_create(&t.path().join("oci")).unwrap();
        assert!(l.set_tags(&[("a b".into(), desc(1))]).is_err());
        assert!(l.set_tags(&[(String::new(), desc(1))]).is_err());
    }
}
