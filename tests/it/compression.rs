//! Layer compression: gzip by default, zstd from the config or the flag;
//! layers of either kind read back as bases.

use std::fs;

use crate::util::{require_root, Env};

/// The media types of the layers of `tag`'s manifest.
fn layer_types(env: &Env, tag: &str) -> Vec<String> {
    let json = |rel: &str| -> serde_json::Value {
        serde_json::from_slice(&fs::read(env.layout().join(rel)).unwrap()).unwrap()
    };
    let index = json("index.json");
    let desc = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("no tag {tag}"));
    let blob = |digest: &str| format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"));
    let manifest = json(&blob(desc["digest"].as_str().unwrap()));
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["mediaType"].as_str().unwrap().to_string())
        .collect()
}

const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// Two specs, so that the upper one finds `lower` in the layout as it is
/// (in one spec, a change of compression rebuilds both).
fn specs(env: &Env) {
    env.write("lower/a", "a\n");
    env.write("upper/b", "b\n");
    env.write("lower.yaml", "lower:\n  base: empty\n  copy: ./lower /\n");
    env.write("upper.yaml", "upper:\n  base: lower\n  copy: ./upper /\n");
}

/// Forget every snapshot, so that the next build must apply the layers.
fn wipe_store(env: &Env) {
    fs::remove_dir_all(env.path().join(".genoci")).unwrap();
}

/// The files of `tag`, as the store gives them back.
fn checked_out(env: &Env, tag: &str) -> (String, String) {
    let tree = env.ok(&["checkout", tag]);
    let tree = std::path::PathBuf::from(tree.trim());
    let files = (
        fs::read_to_string(tree.join("a")).unwrap(),
        fs::read_to_string(tree.join("b")).unwrap(),
    );
    env.ok(&["abort"]);
    files
}

#[test]
fn zstd_from_the_flag_on_a_gzip_base() {
    require_root!();
    let env = Env::new();
    specs(&env);
    env.ok(&["build", "lower.yaml"]);
    assert_eq!(layer_types(&env, "lower"), [GZIP]);
    wipe_store(&env);
    env.ok(&["--compression", "zstd", "build", "upper.yaml"]);
    assert_eq!(layer_types(&env, "upper"), [GZIP, ZSTD]);
    wipe_store(&env);
    assert_eq!(checked_out(&env, "upper"), ("a\n".into(), "b\n".into()));
}

#[test]
fn zstd_from_the_config_under_a_gzip_layer() {
    require_root!();
    let env = Env::new();
    env.write(
        "atom_config.yaml",
        "driver: plain\nlayoutdir: ./oci\nstoredir: ./.genoci\ncompression: zstd\n",
    );
    specs(&env);
    env.ok(&["build", "lower.yaml"]);
    assert_eq!(layer_types(&env, "lower"), [ZSTD]);
    wipe_store(&env);
    // The flag wins over the config.
    env.ok(&["build", "--compression", "gzip", "upper.yaml"]);
    assert_eq!(layer_types(&env, "upper"), [ZSTD, GZIP]);
    wipe_store(&env);
    assert_eq!(checked_out(&env, "upper"), ("a\n".into(), "b\n".into()));
}
