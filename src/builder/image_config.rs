//! A target's image config: its base's, with one more history entry and
//! layer, and the target's config keys applied on top.

use std::collections::BTreeMap;

use indexmap::IndexMap;
use oci_spec::image::{Config, History, ImageConfiguration, RootFs};

use crate::layout::Platform;
use crate::spec::vars;
use crate::spec::{plan, ConfigKeys};

/// The `PATH` docker gives an image built from scratch (buildah does too),
/// so that `sh` or `$PATH:/opt/bin` mean in it what they mean elsewhere.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A config key whose value could not be resolved.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ResolveError {
    /// The key, with the entry for mappings: `env PATH`, `workdir`.
    pub key: String,
    pub message: String,
}

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

/// The config an image built on nothing starts from: for this machine,
/// whose programs its `run` steps execute. (An image on a base keeps the
/// base's platform with the rest of its config.)
pub fn empty_config() -> ImageConfiguration {
    let mut c = ImageConfiguration::default();
    Platform::machine().set_on(&mut c);
    c.set_rootfs(RootFs::default());
    let mut run = Config::default();
    run.set_env(Some(vec![format!("PATH={DEFAULT_PATH}")]));
    c.set_config(Some(run));
    c
}

/// The target's keys with their values made final against the config they
/// inherit, as docker's `ENV`, `WORKDIR` and `LABEL` do: `$` references
/// expanded from the inherited `Env` and the target's `env` keys before
/// them (in order; then `workdir`, `user` and `labels` see all of `env`), and a
/// relative `workdir` taken from the inherited one.
pub fn resolve(base: &Config, keys: &ConfigKeys) -> Result<ConfigKeys, ResolveError> {
    let mut env: IndexMap<String, String> = env_pairs(base).into_iter().collect();
    let mut out = keys.clone();
    for (name, value) in &keys.env {
        let value = expand(&env, value, || format!("env {name}"))?;
        out.env.insert(name.clone(), value.clone());
        env.insert(name.clone(), value);
    }
    if let Some(w) = &keys.workdir {
        let w = expand(&env, w, || "workdir".to_string())?;
        if w.is_empty() {
            return Err(ResolveError {
                key: "workdir".into(),
                message: format!(
                    "{:?} expands to nothing",
                    keys.workdir.as_deref().unwrap_or_default()
                ),
            });
        }
        let inherited = base.working_dir().as_deref().unwrap_or("/");
        out.workdir = Some(workdir(inherited, &w));
    }
    if let Some(u) = &keys.user {
        out.user = Some(expand(&env, u, || "user".to_string())?);
    }
    for (name, value) in &keys.labels {
        let value = expand(&env, value, || format!("labels {name}"))?;
        out.labels.insert(name.clone(), value);
    }
    Ok(out)
}

fn expand(
    env: &IndexMap<String, String>,
    text: &str,
    key: impl Fn() -> String,
) -> Result<String, ResolveError> {
    vars::expand(text, &|name| env.get(name).cloned()).map_err(|e| ResolveError {
        key: key(),
        message: e.to_string(),
    })
}

/// `requested` made absolute against `inherited` and cleaned, as docker
/// does for `WORKDIR` (`/app` then `sub` is `/app/sub`; `..` stops at `/`).
fn workdir(inherited: &str, requested: &str) -> String {
    let joined = if requested.starts_with('/') {
        requested.to_string()
    } else {
        format!("{inherited}/{requested}")
    };
    let path = plan::image_path(&joined);
    match path.strip_suffix('/') {
        Some(dir) if !dir.is_empty() => dir.to_string(),
        _ => path,
    }
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
    if let Some(author) = &keys.author {
        config.set_author(Some(author.clone()));
    }
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

    fn base_with(env: &[&str], workdir: Option<&str>) -> Config {
        let mut c = Config::default();
        c.set_env(Some(env.iter().map(|e| e.to_string()).collect()));
        c.set_working_dir(workdir.map(str::to_string));
        c
    }

    fn keys(env: &[(&str, &str)], workdir: Option<&str>, labels: &[(&str, &str)]) -> ConfigKeys {
        let pairs = |p: &[(&str, &str)]| {
            p.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        ConfigKeys {
            env: pairs(env),
            workdir: workdir.map(str::to_string),
            labels: pairs(labels),
            ..Default::default()
        }
    }

    #[test]
    fn env_expands_from_the_inherited_env_and_the_keys_before() {
        let base = base_with(&["PATH=/bin", "A=old"], None);
        let k = keys(
            &[
                ("PATH", "$PATH:/opt/bin"),
                ("A", "new"),
                ("B", r"${A}-$UNSET-\$A"),
            ],
            Some("$A"),
            &[("l", "${B:+b=$B}")],
        );
        let k = ConfigKeys {
            user: Some("${A}:${G:-100}".into()),
            ..k
        };
        let out = resolve(&base, &k).unwrap();
        assert_eq!(out.user.as_deref(), Some("new:100"));
        let env: Vec<_> = out.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(env, ["PATH=/bin:/opt/bin", "A=new", "B=new--$A"]);
        assert_eq!(out.workdir.as_deref(), Some("/new"));
        assert_eq!(out.labels["l"], "b=new--$A");
    }

    #[rstest::rstest]
    #[case::relative(Some("/app"), "sub", "/app/sub")]
    #[case::nothing_inherited(None, "sub", "/sub")]
    #[case::absolute(Some("/app"), "/srv/", "/srv")]
    #[case::dots(Some("/app/x"), "../y/./z", "/app/y/z")]
    #[case::above_root(Some("/"), "../..", "/")]
    fn a_relative_workdir_resolves_against_the_inherited_one(
        #[case] inherited: Option<&str>,
        #[case] requested: &str,
        #[case] want: &str,
    ) {
        let out = resolve(&base_with(&[], inherited), &keys(&[], Some(requested), &[])).unwrap();
        assert_eq!(out.workdir.as_deref(), Some(want));
    }

    #[test]
    fn resolve_errors_name_the_key() {
        let base = base_with(&[], None);
        let e = resolve(&base, &keys(&[("X", "${NEED:?set NEED}")], None, &[])).unwrap_err();
        assert_eq!(e.to_string(), "env X: NEED: set NEED");
        let e = resolve(&base, &keys(&[], Some("$NOPE"), &[])).unwrap_err();
        assert_eq!(e.to_string(), "workdir: \"$NOPE\" expands to nothing");
        let e = resolve(&base, &keys(&[], None, &[("l", "${x?}")])).unwrap_err();
        assert_eq!(e.to_string(), "labels l: x: is not allowed to be unset");
    }

    #[test]
    fn an_image_from_nothing_has_the_default_path_and_an_author_is_set() {
        let k = ConfigKeys {
            author: Some("me".into()),
            ..Default::default()
        };
        let out = derive(&empty_config(), None, "t", "x".into(), &k);
        assert_eq!(
            out.config().clone().unwrap().env().clone().unwrap(),
            vec![format!("PATH={DEFAULT_PATH}")]
        );
        assert_eq!(out.author().as_deref(), Some("me"));
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
