//! A target's image config: its base's, with one more history entry and
//! layer, and the target's config keys applied on top.

use std::collections::BTreeMap;

use oci_spec::image::{Arch, Config, History, ImageConfiguration, Os, RootFs};

use crate::spec::ConfigKeys;

/// An image's `Env` as `(name, value)` pairs, for a process run in it.
pub fn env_pairs(config: &Config) -> Vec<(String, String)> {
    config
        .env()
        .iter()
        .flatten()
        .filter_map(|e| {
            e.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

/// The config an image built on nothing starts from.
pub fn empty_config() -> ImageConfiguration {
    let mut c = ImageConfiguration::default();
    c.set_architecture(Arch::Amd64);
    c.set_os(Os::Linux);
    c.set_rootfs(RootFs::default());
    c
}

/// History entries that pair with the layers one to one (umoci relies on it).
/// Images from elsewhere sometimes have none; give their layers one each.
pub fn normalized_history(config: &ImageConfiguration) -> Vec<History> {
    let history = config.history().clone().unwrap_or_default();
    let layers = config.rootfs().diff_ids().len();
    let non_empty = history
        .iter()
        .filter(|h| !h.empty_layer().unwrap_or(false))
        .count();
    if non_empty == layers {
        return history;
    }
    (0..layers)
        .map(|i| {
            let mut h = History::default();
            h.set_created_by(Some(format!("imported layer {}", i + 1)));
            h
        })
        .collect()
}

/// Add this target's layer (if any) and history entry, then its config keys.
pub fn derive(
    base: &ImageConfiguration,
    diff_id: Option<&str>,
    created: &str,
    created_by: String,
    keys: &ConfigKeys,
) -> ImageConfiguration {
    let mut config = base.clone();
    config.set_created(Some(created.to_string()));
    let mut rootfs = config.rootfs().clone();
    let mut diff_ids = rootfs.diff_ids().clone();
    let mut history = normalized_history(base);
    let mut entry = History::default();
    entry.set_created(Some(created.to_string()));
    entry.set_created_by(Some(created_by));
    match diff_id {
        Some(d) => diff_ids.push(d.to_string()),
        None => {
            entry.set_empty_layer(Some(true));
        }
    }
    history.push(entry);
    rootfs.set_diff_ids(diff_ids);
    config.set_rootfs(rootfs);
    config.set_history(Some(history));
    let mut run = config.config().clone().unwrap_or_default();
    apply_keys(&mut run, keys);
    config.set_config(Some(run));
    config
}

fn apply_keys(c: &mut Config, keys: &ConfigKeys) {
    if let Some(entrypoint) = &keys.entrypoint {
        c.set_entrypoint(Some(entrypoint.clone()));
        // As in docker: a new entrypoint drops the inherited arguments.
        c.set_cmd(None);
    }
    if let Some(cmd) = &keys.cmd {
        c.set_cmd(Some(cmd.clone()));
    }
    if !keys.env.is_empty() {
        let mut env = c.env().clone().unwrap_or_default();
        for (name, value) in &keys.env {
            let item = format!("{name}={value}");
            match env
                .iter_mut()
                .find(|e| e.split('=').next() == Some(name.as_str()))
            {
                Some(existing) => *existing = item,
                None => env.push(item),
            }
        }
        c.set_env(Some(env));
    }
    if let Some(w) = &keys.workdir {
        c.set_working_dir(Some(w.clone()));
    }
    if let Some(u) = &keys.user {
        c.set_user(Some(u.clone()));
    }
    if !keys.labels.is_empty() {
        let mut labels = c.labels().clone().unwrap_or_default();
        labels.extend(keys.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        c.set_labels(Some(labels));
    }
    if !keys.volumes.is_empty() {
        c.set_volumes(Some(merged(c.volumes(), &keys.volumes)));
    }
    if !keys.ports.is_empty() {
        c.set_exposed_ports(Some(merged(c.exposed_ports(), &keys.ports)));
    }
}

fn merged(old: &Option<Vec<String>>, new: &[String]) -> Vec<String> {
    let mut all: Vec<String> = old.clone().unwrap_or_default();
    all.extend(new.iter().cloned());
    all.sort();
    all.dedup();
    all
}

/// Manifest annotations: the base's, overridden by the target's.
pub fn annotations(
    base: Option<&std::collections::HashMap<String, String>>,
    keys: &ConfigKeys,
) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = base
        .map(|b| b.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    // The ref name belongs on index entries, not inherited manifests.
    out.remove("org.opencontainers.image.ref.name");
    out.extend(keys.annotations.iter().map(|(k, v)| (k.clone(), v.clone())));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entrypoint_clears_inherited_cmd_and_env_overrides_by_name() {
        let mut base = empty_config();
        let mut c = Config::default();
        c.set_cmd(Some(vec!["sh".into()]));
        c.set_env(Some(vec!["PATH=/bin".into(), "A=1".into()]));
        base.set_config(Some(c));
        let mut keys = ConfigKeys {
            entrypoint: Some(vec!["/bin/echo".into(), "hi".into()]),
            ..Default::default()
        };
        keys.env.insert("A".into(), "2".into());
        keys.env.insert("B".into(), "3".into());
        let out = derive(&base, None, "2020-01-01T00:00:00Z", "x".into(), &keys);
        let c = out.config().clone().unwrap();
        assert_eq!(c.cmd(), &None);
        assert_eq!(c.env().clone().unwrap(), vec!["PATH=/bin", "A=2", "B=3"]);
        let h = out.history().clone().unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].empty_layer(), Some(true));
    }

    #[test]
    fn history_pairs_with_layers() {
        let mut base = empty_config();
        let mut rootfs = RootFs::default();
        rootfs.set_diff_ids(vec!["sha256:a".into(), "sha256:b".into()]);
        base.set_rootfs(rootfs);
        let out = derive(
            &base,
            Some("sha256:c"),
            "t",
            "x".into(),
            &ConfigKeys::default(),
        );
        let h = out.history().clone().unwrap();
        assert_eq!(
            h.iter()
                .filter(|h| !h.empty_layer().unwrap_or(false))
                .count(),
            3
        );
        assert_eq!(out.rootfs().diff_ids().len(), 3);
    }
}
