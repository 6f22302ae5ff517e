//! gc prunes only the dated tags genoci made, keeps every blob any index
//! entry reaches whatever its media type, and removes nothing unless it
//! could read everything.

use std::fs;
use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::stores::{driver_tests, tag_digests, Store};
use crate::util::{require_tool, run_ok, Env};

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// Store `bytes` as a blob; its descriptor.
fn put_blob(layout: &Path, media_type: &str, bytes: &[u8]) -> Value {
    let hex = hex::encode(Sha256::digest(bytes));
    fs::write(layout.join("blobs/sha256").join(&hex), bytes).unwrap();
    json!({"mediaType": media_type, "digest": format!("sha256:{hex}"), "size": bytes.len()})
}

fn blob_exists(layout: &Path, desc: &Value) -> bool {
    let digest = desc["digest"].as_str().unwrap();
    layout
        .join("blobs/sha256")
        .join(digest.strip_prefix("sha256:").unwrap())
        .exists()
}

/// Add an index entry tagged `tag`, as another tool would.
fn add_entry(layout: &Path, tag: &str, desc: &Value) {
    let path = layout.join("index.json");
    let mut index: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    let mut desc = desc.clone();
    desc["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
    index["manifests"].as_array_mut().unwrap().push(desc);
    fs::write(&path, serde_json::to_vec(&index).unwrap()).unwrap();
}

fn remove_entry(layout: &Path, tag: &str) {
    let path = layout.join("index.json");
    let mut index: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    index["manifests"]
        .as_array_mut()
        .unwrap()
        .retain(|d| d["annotations"]["org.opencontainers.image.ref.name"] != tag);
    fs::write(&path, serde_json::to_vec(&index).unwrap()).unwrap();
}

/// An OCI artifact (empty config, `artifactType`) about `subject`.
fn add_artifact(layout: &Path, subject: &Value) -> Vec<Value> {
    let config = put_blob(layout, "application/vnd.oci.empty.v1+json", b"{}");
    let payload = put_blob(layout, "application/vnd.example.sbom", b"an sbom");
    let manifest = json!({
        "schemaVersion": 2, "mediaType": MANIFEST,
        "artifactType": "application/vnd.example.sbom",
        "config": config, "layers": [payload], "subject": subject,
    });
    let desc = put_blob(layout, MANIFEST, &serde_json::to_vec(&manifest).unwrap());
    add_entry(layout, "sbom", &desc);
    vec![config, payload, desc]
}

/// A tagged index holding only a linux/arm64 image.
fn add_foreign_platform(layout: &Path) -> Vec<Value> {
    let config = put_blob(
        layout,
        "application/vnd.oci.image.config.v1+json",
        br#"{"architecture":"arm64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#,
    );
    let layer = put_blob(
        layout,
        "application/vnd.oci.image.layer.v1.tar",
        b"arm bits",
    );
    let manifest =
        json!({"schemaVersion": 2, "mediaType": MANIFEST, "config": config, "layers": [layer]});
    let mut mdesc = put_blob(layout, MANIFEST, &serde_json::to_vec(&manifest).unwrap());
    mdesc["platform"] = json!({"architecture": "arm64", "os": "linux"});
    let index = json!({"schemaVersion": 2, "mediaType": INDEX, "manifests": [mdesc]});
    let desc = put_blob(layout, INDEX, &serde_json::to_vec(&index).unwrap());
    add_entry(layout, "arm", &desc);
    vec![config, layer, mdesc, desc]
}

/// Bugs: gc pruned dated-looking tags it did not make (copied in by skopeo,
/// or given to checkin), and an artifact or a foreign-platform index in the
/// index made it fail after it had already pruned tags.
fn gc_prunes_only_what_it_owns(store: &Store) {
    require_tool!("skopeo");
    let env: &Env = store;
    let layout = env.layout();
    env.write("a", "a\n");
    env.write("spec.yaml", "app:\n  base: empty\n  copy: ./a /a\n");
    env.ok(&["build", "spec.yaml"]);
    env.ok(&["build", "--no-cache", "spec.yaml"]);
    let ours: Vec<String> = env
        .tags()
        .into_iter()
        .filter(|t| t.starts_with("app-"))
        .collect();
    assert_eq!(ours.len(), 2);
    for tag in ["release-2025-01-01_1", "release-2025-01-02_1"] {
        let dest = format!("oci:{}:{tag}", layout.display());
        let src = format!("oci:{}:app", layout.display());
        run_ok(Command::new("skopeo").args(["copy", &src, &dest]));
    }
    for tag in ["keep-2026-11-26_9", "keep-2026-11-27_1"] {
        env.ok(&["checkout", "app"]);
        env.ok(&["checkin", tag]);
    }
    let app_digest = &tag_digests(&layout)["app"];
    let app_size = fs::metadata(layout.join("blobs/sha256").join(&app_digest[7..]))
        .unwrap()
        .len();
    let app = json!({"mediaType": MANIFEST, "digest": app_digest, "size": app_size});
    let mut foreign = add_artifact(&layout, &app);
    foreign.extend(add_foreign_platform(&layout));
    let orphan = put_blob(&layout, "application/octet-stream", b"nobody's");

    // A tag naming a manifest that is not there: gc must not start.
    let missing =
        json!({"mediaType": MANIFEST, "digest": format!("sha256:{}", "0".repeat(64)), "size": 3});
    add_entry(&layout, "broken", &missing);
    let before = tag_digests(&layout);
    let out = env.genoci(&["gc"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(tag_digests(&layout), before, "gc changed tags, then failed");
    assert!(blob_exists(&layout, &orphan), "gc deleted, then failed");
    remove_entry(&layout, "broken");

    env.ok(&["gc"]);
    let mut expected: Vec<String> = [
        "app",
        "arm",
        "keep-2026-11-26_9",
        "keep-2026-11-27_1",
        "release-2025-01-01_1",
        "release-2025-01-02_1",
        "sbom",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    expected.push(ours[1].clone());
    expected.sort();
    assert_eq!(env.tags(), expected);
    for desc in &foreign {
        assert!(blob_exists(&layout, desc), "{desc} was deleted");
    }
    assert!(!blob_exists(&layout, &orphan), "an unreachable blob stayed");
    // The second gc has nothing left to do.
    let again = env.ok(&["gc"]);
    assert!(again.contains("removed 0 blobs"), "{again}");
}

driver_tests!(gc_prunes_only_what_it_owns);
