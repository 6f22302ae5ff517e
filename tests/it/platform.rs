//! The platform of what genoci builds: the base image's, else this
//! machine's; and a `run` step on a base this machine cannot execute.

use std::fs;
use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::stores::tag_digests;
use crate::util::{require_root, stderr, Env};

/// This machine in GOARCH names, from `uname -m`.
fn machine_arch() -> String {
    let out = Command::new("uname").arg("-m").output().unwrap();
    match String::from_utf8(out.stdout).unwrap().trim() {
        "x86_64" => "amd64".into(),
        "aarch64" => "arm64".into(),
        "armv7l" => "arm".into(),
        other => panic!("no GOARCH name known here for {other}"),
    }
}

/// An architecture this machine cannot execute, and the ELF machine number
/// of its programs.
fn foreign_arch() -> (&'static str, u16) {
    match machine_arch().as_str() {
        "amd64" => ("arm64", 183),
        _ => ("amd64", 62),
    }
}

/// The 64-byte header of a little-endian ELF64 executable for `machine`:
/// enough for the kernel to see whose program it is and refuse it.
fn elf_header(machine: u16) -> Vec<u8> {
    let mut h = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    h.extend(2u16.to_le_bytes()); // ET_EXEC
    h.extend(machine.to_le_bytes());
    h.extend(1u32.to_le_bytes());
    h.extend(0x40_0000u64.to_le_bytes()); // entry
    h.extend(64u64.to_le_bytes()); // program headers
    h.extend(0u64.to_le_bytes());
    h.extend(0u32.to_le_bytes());
    for half in [64u16, 56, 0, 64, 0, 0] {
        h.extend(half.to_le_bytes());
    }
    h
}

fn put_blob(layout: &Path, bytes: &[u8]) -> (String, usize) {
    let hex = hex::encode(Sha256::digest(bytes));
    let dir = layout.join("blobs/sha256");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(&hex), bytes).unwrap();
    (format!("sha256:{hex}"), bytes.len())
}

/// A layout holding one image, tagged `tag`, for `platform` (its config's
/// `os`, `architecture`, `variant`), whose `/bin/sh` and `/bin/dpkg` are `sh`.
fn hand_made_image(env: &Env, tag: &str, platform: Value, sh: &[u8]) {
    let layout = env.layout();
    let mut tar = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    tar.append_data(&mut dir, "bin/", &[][..]).unwrap();
    let mut file = tar::Header::new_gnu();
    file.set_mode(0o755);
    file.set_size(sh.len() as u64);
    tar.append_data(&mut file, "bin/sh", sh).unwrap();
    tar.append_data(&mut file, "bin/dpkg", sh).unwrap();
    let layer = tar.into_inner().unwrap();
    let (layer_digest, layer_size) = put_blob(&layout, &layer);
    let mut config = json!({
        "config": {"Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "history": [{"created_by": "made by hand"}]
    });
    config
        .as_object_mut()
        .unwrap()
        .extend(platform.as_object().unwrap().clone());
    let (config_digest, config_size) = put_blob(&layout, config.to_string().as_bytes());
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": layer_size}]
    });
    let (digest, size) = put_blob(&layout, manifest.to_string().as_bytes());
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": digest, "size": size,
                       "annotations": {"org.opencontainers.image.ref.name": tag}}]
    });
    fs::write(layout.join("index.json"), index.to_string()).unwrap();
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
}

fn read_blob(env: &Env, digest: &str) -> Value {
    let hex = digest.strip_prefix("sha256:").unwrap();
    serde_json::from_slice(&fs::read(env.layout().join("blobs/sha256").join(hex)).unwrap()).unwrap()
}

/// The platform of a tag, as its config and its index entry give it.
fn platform_of(env: &Env, tag: &str) -> (Value, Value) {
    let index: Value =
        serde_json::from_slice(&fs::read(env.layout().join("index.json")).unwrap()).unwrap();
    let entry = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap()
        .clone();
    let manifest = read_blob(env, &tag_digests(&env.layout())[tag]);
    let config = read_blob(env, manifest["config"]["digest"].as_str().unwrap());
    let of_config = json!({"os": config["os"], "architecture": config["architecture"],
                           "variant": config["variant"]});
    let of_entry = json!({"os": entry["platform"]["os"], "architecture": entry["platform"]["architecture"],
                          "variant": entry["platform"]["variant"]});
    (of_config, of_entry)
}

#[test]
fn an_image_on_empty_is_for_this_machine() {
    require_root!();
    let env = Env::new();
    env.write("hello.txt", "hello\n");
    env.write(
        "spec.yaml",
        "one:\n  base: empty\n  copy: hello.txt /hello.txt\n",
    );
    env.ok(&["build", "spec.yaml"]);
    let (config, entry) = platform_of(&env, "one");
    let variant = if machine_arch() == "arm" {
        json!("v7")
    } else {
        Value::Null
    };
    let want = json!({"os": "linux", "architecture": machine_arch(), "variant": variant});
    assert_eq!(config, want);
    assert_eq!(entry, want);
}

/// Regression: the variant of an `arm/v7` base was dropped from the index
/// entry of an image built on it.
#[test]
fn an_image_keeps_its_bases_platform_variant_included() {
    require_root!();
    let env = Env::new();
    let platform = json!({"os": "linux", "architecture": "arm", "variant": "v7"});
    hand_made_image(&env, "armbase", platform.clone(), &elf_header(40));
    env.write("spec.yaml", "child:\n  base: armbase\n  env:\n    A: b\n");
    env.ok(&["build", "spec.yaml"]);
    let (config, entry) = platform_of(&env, "child");
    assert_eq!(config, platform);
    assert_eq!(entry, platform);
}

/// Regression: a `run` step on a base for another CPU failed with "Exec
/// format error" alone.
#[test]
fn a_run_step_on_a_foreign_base_says_this_machine_cannot_run_it() {
    require_root!();
    let env = Env::new();
    let (arch, elf_machine) = foreign_arch();
    let platform = json!({"os": "linux", "architecture": arch});
    hand_made_image(&env, "foreign", platform, &elf_header(elf_machine));
    env.write(
        "spec.yaml",
        "child:\n  base: foreign\n  run: echo hi > /hi\n",
    );
    let out = env.genoci(&["build", "spec.yaml"]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    let want = format!(
        "target child: run step 1 (`echo hi > /hi`): the image is linux/{arch} and this machine cannot run its programs"
    );
    assert!(err.contains(&want), "{err}");
    assert!(err.contains("Exec format error"), "{err}");
    assert!(!env.tags().contains(&"child".to_string()));
}

#[test]
fn an_install_on_a_foreign_base_says_this_machine_cannot_run_it() {
    require_root!();
    let env = Env::new();
    let (arch, elf_machine) = foreign_arch();
    let platform = json!({"os": "linux", "architecture": arch});
    hand_made_image(&env, "foreign", platform, &elf_header(elf_machine));
    env.write("hello_1.0_all.deb", "not read: dpkg cannot start\n");
    env.write(
        "spec.yaml",
        "child:\n  base: foreign\n  install: hello_1.0_all.deb\n",
    );
    let out = env.genoci(&["build", "spec.yaml"]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    let want = format!(
        "target child: install: the image is linux/{arch} and this machine cannot run its programs"
    );
    assert!(err.contains(&want), "{err}");
}
