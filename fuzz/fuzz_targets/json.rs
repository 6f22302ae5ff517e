//! The layout's JSON readers: `index.json` (tags) and a blob read as an
//! image manifest or an image index. Any bytes give a value or an error.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use oci_spec::image::MediaType;

use genoci::layout::Layout;

fn layout() -> &'static (tempfile::TempDir, Layout) {
    static L: OnceLock<(tempfile::TempDir, Layout)> = OnceLock::new();
    L.get_or_init(|| {
        let d = tempfile::tempdir().expect("temp dir");
        let l = Layout::open_or_create(&d.path().join("oci")).expect("layout");
        (d, l)
    })
}

fuzz_target!(|data: &[u8]| {
    let (_, layout) = layout();
    std::fs::write(layout.root().join("index.json"), data).expect("write index");
    if let Ok(tags) = layout.tags() {
        for (tag, _) in tags.iter().take(4) {
            let _ = layout.image_by_tag(tag);
        }
    }
    for media_type in [MediaType::ImageManifest, MediaType::ImageIndex] {
        let mut blob = layout.blob_writer().expect("blob writer");
        std::io::Write::write_all(&mut blob, data).expect("write blob");
        let desc = blob.finish(media_type).expect("finish blob");
        let _ = layout.image(&desc);
        // Millions of inputs would fill the disk.
        std::fs::remove_file(layout.blob_path(desc.digest().as_ref())).expect("remove blob");
    }
});
