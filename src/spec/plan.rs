//! From raw targets to a [`BuildPlan`]: bases, cycles, tag names, host files, order.
//!
//! The whole spec is checked before anything is built, and every problem is
//! reported at once: a user fixing a spec should not need one run per typo.

use std::collections::{HashMap, HashSet};
use std::path::{Component, Path, PathBuf};

use indexmap::IndexMap;
use yaml_serde::Value;

use super::raw::{self, RawError, RawTarget};
use super::vars;
use super::{Base, BuildPlan, ConfigKeys, CopyItem, Package, Problem, RunItem, SpecError, Target};

/// The longest tag a registry accepts (distribution spec).
const MAX_TAG: usize = 128;

/// Read and check the spec at `file`. `existing_tag` says whether a tag is
/// already in the layout (a base not built by this spec must be).
pub fn load(file: &Path, existing_tag: &dyn Fn(&str) -> bool) -> Result<BuildPlan, SpecError> {
    let fail = |message: String| SpecError {
        problems: vec![Problem {
            file: file.to_path_buf(),
            line: None,
            target: None,
            key: None,
            message,
        }],
    };
    let text =
        std::fs::read_to_string(file).map_err(|e| fail(format!("cannot read the spec: {e}")))?;
    let abs = std::path::absolute(file)
        .map_err(|e| fail(format!("cannot make the path absolute: {e}")))?;
    let dir = abs
        .parent()
        .map(lexical)
        .unwrap_or_else(|| PathBuf::from("/"));
    let plan = Checker::new(file, &text, &dir).check(existing_tag)?;
    tracing::debug!(file = %file.display(), targets = plan.len(), "spec checked");
    Ok(BuildPlan {
        file: abs,
        dir,
        targets: plan,
    })
}

/// Collects problems while resolving the spec.
struct Checker<'a> {
    file: &'a Path,
    text: &'a str,
    dir: &'a Path,
    locator: Locator<'a>,
    problems: Vec<Problem>,
}

impl<'a> Checker<'a> {
    fn new(file: &'a Path, text: &'a str, dir: &'a Path) -> Self {
        Checker {
            file,
            text,
            dir,
            locator: Locator::new(text),
            problems: Vec::new(),
        }
    }

    /// Record a problem, placed on the key's line within the target, else
    /// on the target's line.
    fn report(&mut self, target: Option<&str>, key: Option<&str>, message: String) {
        let line = target.and_then(|t| {
            key.and_then(|k| self.locator.key(t, k))
                .or_else(|| self.locator.target(t))
        });
        self.problems.push(Problem {
            file: self.file.to_path_buf(),
            line,
            target: target.map(str::to_owned),
            key: key.map(str::to_owned),
            message,
        });
    }

    fn check(mut self, existing_tag: &dyn Fn(&str) -> bool) -> Result<Vec<Target>, SpecError> {
        let doc = match raw::document(self.text) {
            Ok(doc) => doc,
            Err(e) => {
                let line = match &e {
                    RawError::Yaml { line, .. } => *line,
                    _ => None,
                };
                self.problems.push(Problem {
                    file: self.file.to_path_buf(),
                    line,
                    target: None,
                    key: None,
                    message: e.to_string(),
                });
                return Err(self.into_error());
            }
        };
        if doc.is_empty() {
            self.report(None, None, "the spec has no targets".into());
            return Err(self.into_error());
        }

        let mut parsed: IndexMap<&str, (RawTarget, &Value)> = IndexMap::new();
        for (name, value) in &doc {
            if let Some(message) = tag_name_problem(name) {
                self.report(Some(name), None, message);
            }
            match RawTarget::from_yaml(value) {
                Ok(target) => {
                    parsed.insert(name, (target, value));
                }
                Err(errors) => {
                    for e in errors {
                        self.report(Some(name), e.key.as_deref(), e.message);
                    }
                }
            }
        }

        let mut bases: HashMap<&str, Base> = HashMap::new();
        for (name, (target, _)) in &parsed {
            if let Some(base) = self.resolve_base(name, target, &doc, existing_tag) {
                bases.insert(name, base);
            }
        }
        self.check_cycles(&parsed, &bases);

        let mut targets = HashMap::new();
        for (name, (raw, value)) in &parsed {
            if let Some(target) = self.resolve(name, raw, value, bases.get(name).cloned()) {
                targets.insert(*name, target);
            }
        }

        if !self.problems.is_empty() {
            return Err(self.into_error());
        }
        Ok(build_order(parsed.keys().copied(), &bases)
            .into_iter()
            .filter_map(|name| targets.remove(name))
            .collect())
    }

    /// The problems in the order of the file, whatever check found them.
    fn into_error(mut self) -> SpecError {
        self.problems.sort_by_key(|p| p.line);
        SpecError {
            problems: self.problems,
        }
    }

    fn resolve_base(
        &mut self,
        name: &str,
        target: &RawTarget,
        doc: &IndexMap<String, Value>,
        existing_tag: &dyn Fn(&str) -> bool,
    ) -> Option<Base> {
        let Some(base) = target.base.as_deref() else {
            self.report(Some(name), Some("base"), "missing key base".into());
            return None;
        };
        // A target of this spec wins over a tag of the same name in the
        // layout: the spec is what the user asks to build now.
        if base == "empty" {
            Some(Base::Empty)
        } else if doc.contains_key(base) || existing_tag(base) {
            Some(Base::Tag(base.to_owned()))
        } else {
            self.report(
                Some(name),
                Some("base"),
                format!("unknown base {base:?}: neither `empty`, a target of this spec, nor a tag in the layout"),
            );
            None
        }
    }

    /// Each target has at most one base, so every cycle is found by
    /// following bases from each target once.
    fn check_cycles(
        &mut self,
        parsed: &IndexMap<&str, (RawTarget, &Value)>,
        bases: &HashMap<&str, Base>,
    ) {
        let in_spec_base = |name: &str| match bases.get(name) {
            Some(Base::Tag(b)) if parsed.contains_key(b.as_str()) => Some(b.as_str()),
            _ => None,
        };
        let mut done: HashSet<&str> = HashSet::new();
        for &start in parsed.keys() {
            let mut path: Vec<&str> = Vec::new();
            let mut node = Some(start);
            while let Some(n) = node.filter(|n| !done.contains(n)) {
                if let Some(at) = path.iter().position(|p| *p == n) {
                    let cycle = &path[at..];
                    // Start the message at the member written first in the
                    // file, so the same cycle always reads the same way.
                    let first = (0..cycle.len())
                        .min_by_key(|&i| parsed.get_index_of(cycle[i]))
                        .unwrap_or(0);
                    let mut names: Vec<&str> = cycle[first..]
                        .iter()
                        .chain(&cycle[..first])
                        .copied()
                        .collect();
                    names.push(names[0]);
                    self.report(
                        Some(names[0]),
                        Some("base"),
                        format!("base cycle: {}", names.join(" -> ")),
                    );
                    break;
                }
                path.push(n);
                node = in_spec_base(n);
            }
            done.extend(path);
        }
    }

    /// Resolve host paths and image paths of one target; `None` if any
    /// problem was found. Checked even without a valid `base`, so that its
    /// other problems are reported in the same run.
    fn resolve(
        &mut self,
        name: &str,
        raw: &RawTarget,
        value: &Value,
        base: Option<Base>,
    ) -> Option<Target> {
        let before = self.problems.len();

        let expand = raw
            .expand
            .iter()
            .map(|item| {
                let path = host_path(self.dir, item);
                self.need_file(name, "expand", item, &path);
                path
            })
            .collect();

        let copy = raw
            .copy
            .iter()
            .filter_map(|item| self.copy_item(name, item))
            .collect();

        let install = raw
            .install
            .iter()
            .filter_map(|item| self.package(name, item))
            .collect();

        let run = raw.run.iter().map(|item| self.run_item(item)).collect();
        self.check_volumes(name, raw);
        self.check_references(name, raw);
        let config = config_keys(raw);
        self.check_something_to_do(name, raw, &config);

        let stanza = match serde_json::to_string(value) {
            Ok(s) => s,
            Err(e) => {
                self.report(Some(name), None, format!("cannot be written as JSON: {e}"));
                String::new()
            }
        };

        if self.problems.len() > before {
            return None;
        }
        Some(Target {
            name: name.to_owned(),
            line: self.locator.target(name).unwrap_or(0),
            base: base?,
            pre: raw.pre.clone(),
            expand,
            copy,
            install,
            run,
            post: raw.post.clone(),
            network: raw.network,
            summary: summary(raw, &config),
            privileged: raw.privileged,
            config,
            stanza,
        })
    }

    /// A run item naming a host file runs that file; anything else is a script.
    fn run_item(&self, item: &str) -> RunItem {
        let path = host_path(self.dir, item);
        if !item.contains('\n') && path.is_file() {
            RunItem::File(path)
        } else {
            RunItem::Script(item.to_string())
        }
    }

    fn check_volumes(&mut self, name: &str, raw: &RawTarget) {
        for volume in &raw.volumes {
            if !volume.starts_with('/') {
                self.report(
                    Some(name),
                    Some("volumes"),
                    format!("volume {volume:?} must be an absolute path"),
                );
            }
        }
    }

    /// A target with no action and no config key would be a copy of its base.
    fn check_something_to_do(&mut self, name: &str, raw: &RawTarget, config: &ConfigKeys) {
        let no_action = [
            &raw.pre,
            &raw.expand,
            &raw.copy,
            &raw.install,
            &raw.run,
            &raw.post,
        ]
        .iter()
        .all(|items| items.is_empty());
        if no_action && *config == ConfigKeys::default() {
            self.report(
                Some(name),
                None,
                "nothing to do: give at least one action (pre, expand, copy, install, run, post) or image config key".into(),
            );
        }
    }

    /// The syntax of `$` references, checked before anything is built;
    /// their values are known only when the base image is.
    fn check_references(&mut self, name: &str, raw: &RawTarget) {
        let values = raw
            .env
            .iter()
            .map(|(k, v)| ("env", k.as_str(), v))
            .chain(raw.workdir.iter().map(|w| ("workdir", "", w)))
            .chain(raw.user.iter().map(|u| ("user", "", u)))
            .chain(raw.labels.iter().map(|(k, v)| ("labels", k.as_str(), v)));
        for (key, item, value) in values {
            if let Err(e) = vars::parse(value) {
                let what = if item.is_empty() {
                    String::new()
                } else {
                    format!("{item}: ")
                };
                self.report(Some(name), Some(key), format!("{what}{e}"));
            }
        }
    }

    fn need_file(&mut self, name: &str, key: &str, item: &str, path: &Path) {
        match std::fs::metadata(path) {
            Ok(m) if m.is_file() => {}
            Ok(_) => self.report(
                Some(name),
                Some(key),
                format!("{item}: not a regular file ({})", path.display()),
            ),
            Err(e) => self.report(
                Some(name),
                Some(key),
                format!("{item}: {e} ({})", path.display()),
            ),
        }
    }

    fn copy_item(&mut self, name: &str, item: &str) -> Option<CopyItem> {
        let words = match raw::split_words(item) {
            Ok(words) => words,
            Err(e) => {
                self.report(Some(name), Some("copy"), format!("{item:?}: {e}"));
                return None;
            }
        };
        let [src, dest] = words.as_slice() else {
            self.report(
                Some(name),
                Some("copy"),
                format!("{item:?} is not SRC DEST (quote paths that hold spaces)"),
            );
            return None;
        };
        let path = host_path(self.dir, src);
        // A directory is as good as a file here, and a symlink is copied as one.
        if let Err(e) = std::fs::symlink_metadata(&path) {
            self.report(
                Some(name),
                Some("copy"),
                format!("{src}: {e} ({})", path.display()),
            );
            return None;
        }
        Some(CopyItem {
            src: path,
            dest: image_path(dest),
        })
    }

    fn package(&mut self, name: &str, item: &str) -> Option<Package> {
        if item.starts_with("http://") || item.starts_with("https://") {
            return Some(Package::Url(item.to_owned()));
        }
        if !(item.ends_with(".deb") || item.ends_with(".rpm")) {
            self.report(
                Some(name),
                Some("install"),
                format!("{item}: not a .deb or .rpm file nor an http(s) URL"),
            );
            return None;
        }
        let path = host_path(self.dir, item);
        let before = self.problems.len();
        self.need_file(name, "install", item, &path);
        (self.problems.len() == before).then_some(Package::File(path))
    }
}

/// Why `name` cannot be a target (and so a tag), if it cannot: a target
/// name is any OCI tag, `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`, but `empty`.
pub fn tag_name_problem(name: &str) -> Option<String> {
    let mut chars = name.chars();
    let well_formed = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if name == "empty" {
        Some("`empty` is reserved for the empty base and cannot be a target name".into())
    } else if !well_formed {
        Some(format!(
            "invalid target name {name:?}: a tag must match [A-Za-z0-9_][A-Za-z0-9._-]*"
        ))
    } else if name.len() > MAX_TAG {
        Some(format!(
            "target name is {} characters; a tag has at most {MAX_TAG}",
            name.len()
        ))
    } else {
        None
    }
}

/// Targets in file order, each moved after its base when the base is a
/// target too.
fn build_order<'n>(
    names: impl Iterator<Item = &'n str>,
    bases: &HashMap<&str, Base>,
) -> Vec<&'n str> {
    let names: Vec<&str> = names.collect();
    let mut order: Vec<&str> = Vec::with_capacity(names.len());
    let mut placed: HashSet<&str> = HashSet::new();
    for &name in &names {
        // The chain of not-yet-placed bases, placed from the deepest up.
        let mut chain = Vec::new();
        let mut node = Some(name);
        while let Some(n) = node.filter(|n| !placed.contains(n)) {
            chain.push(n);
            placed.insert(n);
            node = match bases.get(n) {
                Some(Base::Tag(b)) => names.iter().copied().find(|t| t == b),
                _ => None,
            };
        }
        order.extend(chain.into_iter().rev());
    }
    order
}

/// `item` on the host, relative to the spec's folder; `.` components
/// dropped. `..` is kept: lexically removing it is wrong across symlinks.
fn host_path(dir: &Path, item: &str) -> PathBuf {
    lexical(&dir.join(item))
}

fn lexical(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| *c != Component::CurDir)
        .collect()
}

/// What a target does, in short: `expand ./a.tar; run 2 steps; config env`.
fn summary(raw: &RawTarget, config: &ConfigKeys) -> String {
    let count = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    let mut done: Vec<String> = Vec::new();
    if !raw.pre.is_empty() {
        done.push(format!("pre {}", count(raw.pre.len(), "command")));
    }
    done.extend(raw.expand.iter().map(|e| format!("expand {e}")));
    done.extend(raw.copy.iter().map(|c| format!("copy {c}")));
    done.extend(raw.install.iter().map(|i| format!("install {i}")));
    if !raw.run.is_empty() {
        done.push(format!("run {}", count(raw.run.len(), "step")));
    }
    if !raw.post.is_empty() {
        done.push(format!("post {}", count(raw.post.len(), "command")));
    }
    let keys = config.set_keys();
    if !keys.is_empty() {
        done.push(format!("config {}", keys.join(", ")));
    }
    done.join("; ")
}

/// An absolute path inside the image: relative paths start at `/`, and
/// `..` stops at `/` since the image has nothing above its root. A trailing
/// `/` is kept: it asks to copy into that directory.
pub fn image_path(dest: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in dest.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    let mut path = format!("/{}", parts.join("/"));
    if dest.ends_with('/') && !parts.is_empty() {
        path.push('/');
    }
    path
}

/// Finds the lines of targets and keys in the spec text, for problems found
/// after parsing (where the YAML parser's locations are gone). Targets are
/// keys at column 0; a target's keys are the lines of its block indented
/// like the block's first key, so a script's text never passes for a key.
struct Locator<'a> {
    lines: Vec<&'a str>,
}

impl<'a> Locator<'a> {
    fn new(text: &'a str) -> Self {
        Locator {
            lines: text.lines().collect(),
        }
    }

    /// 1-based line of the target `name`.
    fn target(&self, name: &str) -> Option<usize> {
        self.target_index(name).map(|i| i + 1)
    }

    /// 1-based line of `key` within the block of target `name`.
    fn key(&self, name: &str, key: &str) -> Option<usize> {
        let start = self.target_index(name)? + 1;
        let block = self.lines[start..]
            .iter()
            .take_while(|l| !starts_at_column_0(l))
            .enumerate()
            .filter(|(_, l)| !is_blank_or_comment(l));
        let mut indent = None;
        for (i, line) in block {
            let this = line.len() - line.trim_start().len();
            if *indent.get_or_insert(this) == this && is_key(line.trim_start(), key) {
                return Some(start + i + 1);
            }
        }
        None
    }

    fn target_index(&self, name: &str) -> Option<usize> {
        self.lines
            .iter()
            .position(|l| starts_at_column_0(l) && is_key(l, name))
    }
}

fn is_blank_or_comment(line: &str) -> bool {
    let t = line.trim_start();
    t.is_empty() || t.starts_with('#')
}

fn starts_at_column_0(line: &str) -> bool {
    !is_blank_or_comment(line) && !line.starts_with([' ', '\t'])
}

/// Whether `line` (indentation removed) is the mapping key `key`, plain or quoted.
fn is_key(line: &str, key: &str) -> bool {
    let rest = [("", ""), ("\"", "\""), ("'", "'")]
        .iter()
        .find_map(|(open, close)| {
            line.strip_prefix(open)?
                .strip_prefix(key)?
                .strip_prefix(close)?
                .strip_prefix(':')
        });
    rest.is_some_and(|r| r.is_empty() || r.starts_with([' ', '\t']))
}

/// The image config keys of a raw target, as the builder applies them.
fn config_keys(raw: &RawTarget) -> ConfigKeys {
    ConfigKeys {
        entrypoint: raw.entrypoint.clone(),
        cmd: raw.cmd.clone(),
        env: raw.env.clone(),
        workdir: raw.workdir.clone(),
        user: raw.user.clone(),
        labels: raw.labels.clone(),
        volumes: raw.volumes.clone(),
        ports: raw.ports.clone(),
        annotations: raw.annotations.clone(),
        author: raw.author.clone(),
    }
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;
    use crate::spec::Network;

    /// Write `files` (a trailing `/` makes a directory) and the spec into a
    /// temp dir, and load it with `tags` already in the layout.
    fn load_spec(
        text: &str,
        files: &[&str],
        tags: &[&str],
    ) -> (tempfile::TempDir, Result<BuildPlan, SpecError>) {
        let dir = tempfile::tempdir().unwrap();
        for f in files {
            let path = dir.path().join(f);
            if f.ends_with('/') {
                std::fs::create_dir_all(&path).unwrap();
            } else {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, "x").unwrap();
            }
        }
        let spec = dir.path().join("spec.yaml");
        std::fs::write(&spec, text).unwrap();
        let result = load(&spec, &|t| tags.contains(&t));
        (dir, result)
    }

    fn problems(text: &str, files: &[&str]) -> Vec<Problem> {
        let (_dir, result) = load_spec(text, files, &[]);
        match result {
            Ok(plan) => panic!("expected problems, got {plan:?}"),
            Err(e) => e.problems,
        }
    }

    #[rstest]
    #[case::unknown_key("a:\n  base: empty\n  run: x\n  runn: y\n", &[], Some("a"), Some("runn"), Some(4), "unknown field `runn`")]
    #[case::bad_value("a:\n  base: empty\n\n  ports: [80, 0]\n", &[], Some("a"), Some("ports"), Some(4), "invalid port")]
    #[case::not_a_mapping("a: hello\n", &[], Some("a"), None, Some(1), "must be a mapping")]
    #[case::missing_base("x:\n  base: empty\n  run: x\na:\n  run: x\n", &[], Some("a"), Some("base"), Some(4), "missing key base")]
    #[case::unknown_base("a:\n  run: x\n  base: nope\n", &[], Some("a"), Some("base"), Some(3), "unknown base \"nope\"")]
    #[case::self_base("a:\n  base: a\n  run: x\n", &[], Some("a"), Some("base"), Some(2), "base cycle: a -> a")]
    #[case::cycle_of_2("a:\n  base: b\n  run: x\nb:\n  base: a\n  run: x\n", &[], Some("a"), Some("base"), Some(2), "base cycle: a -> b -> a")]
    #[case::cycle_of_3(
        "x:\n  base: a\n  run: x\nb:\n  base: c\n  run: x\nc:\n  base: a\n  run: x\na:\n  base: b\n  run: x\n",
        &[], Some("b"), Some("base"), Some(5), "base cycle: b -> c -> a -> b"
    )]
    #[case::invalid_tag("-a:\n  base: empty\n  run: x\n", &[], Some("-a"), None, Some(1), "invalid target name \"-a\"")]
    #[case::invalid_tag_char("a/b:\n  base: empty\n  run: x\n", &[], Some("a/b"), None, Some(1), "invalid target name")]
    #[case::reserved_empty("empty:\n  base: empty\n  run: x\n", &[], Some("empty"), None, Some(1), "`empty` is reserved")]
    #[case::missing_tarball("a:\n  base: empty\n  expand: ./there.tar ./nope.tar\n", &["there.tar"], Some("a"), Some("expand"), Some(3), "./nope.tar: No such file")]
    #[case::tarball_is_a_dir("a:\n  base: empty\n  expand: d\n", &["d/"], Some("a"), Some("expand"), Some(3), "d: not a regular file")]
    #[case::missing_copy_source("a:\n  base: empty\n  copy: [\"nope /x\"]\n", &[], Some("a"), Some("copy"), Some(3), "nope: No such file")]
    #[case::missing_package("a:\n  base: empty\n  install: sub/p.deb\n", &[], Some("a"), Some("install"), Some(3), "sub/p.deb: No such file")]
    #[case::not_a_package("a:\n  base: empty\n  install: p.tar\n", &["p.tar"], Some("a"), Some("install"), Some(3), "not a .deb or .rpm")]
    #[case::copy_one_word("a:\n  base: empty\n  copy: onlysrc\n", &["onlysrc"], Some("a"), Some("copy"), Some(3), "is not SRC DEST")]
    #[case::copy_three_words("a:\n  base: empty\n  copy: f /x /y\n", &["f"], Some("a"), Some("copy"), Some(3), "is not SRC DEST")]
    #[case::copy_quote("a:\n  base: empty\n  copy: \"'f /x\"\n", &["f"], Some("a"), Some("copy"), Some(3), "unterminated ' quote")]
    #[case::relative_volume("a:\n  base: empty\n  volumes: data\n", &[], Some("a"), Some("volumes"), Some(3), "must be an absolute path")]
    #[case::nothing_to_do("a:\n  base: empty\n  network: none\n", &[], Some("a"), None, Some(1), "nothing to do")]
    #[case::empty_lists_do_nothing("a:\n  base: empty\n  run: []\n  env: {}\n", &[], Some("a"), None, Some(1), "nothing to do")]
    #[case::bad_env_reference("a:\n  base: empty\n  env: {P: \"${P\"}\n", &[], Some("a"), Some("env"), Some(3), "P: \"${P\": missing '}'")]
    #[case::bad_workdir_reference("a:\n  base: empty\n  workdir: /${A:=x}\n", &[], Some("a"), Some("workdir"), Some(3), "unsupported modifier \":=\"")]
    #[case::bad_user_reference("a:\n  base: empty\n  user: \"${U\"\n", &[], Some("a"), Some("user"), Some(3), "missing '}'")]
    #[case::bad_label_reference("a:\n  base: empty\n  labels:\n    l: ${}\n", &[], Some("a"), Some("labels"), Some(3), "l: \"${}\": bad substitution")]
    #[case::empty_spec("# only a comment\n", &[], None, None, None, "the spec has no targets")]
    #[case::not_a_spec("- a\n- b\n", &[], None, None, None, "must be a mapping of target names")]
    #[case::yaml_syntax("a:\n  base: empty\n  run: [x\n", &[], None, None, Some(4), "did not find expected")]
    fn each_problem_names_target_key_and_line(
        #[case] text: &str,
        #[case] files: &[&str],
        #[case] target: Option<&str>,
        #[case] key: Option<&str>,
        #[case] line: Option<usize>,
        #[case] message: &str,
    ) {
        let problems = problems(text, files);
        assert_eq!(problems.len(), 1, "{problems:#?}");
        let p = &problems[0];
        assert_eq!(
            (p.target.as_deref(), p.key.as_deref(), p.line),
            (target, key, line),
            "{p}"
        );
        assert!(p.message.contains(message), "{p}");
        assert!(p.file.ends_with("spec.yaml"));
        assert!(p.to_string().contains(message));
    }

    #[test]
    fn a_name_is_at_most_128_characters() {
        let ok = "a".repeat(MAX_TAG);
        let spec = format!("{ok}:\n  base: empty\n  run: x\n{ok}b:\n  base: empty\n  run: x\n");
        let problems = problems(&spec, &[]);
        assert_eq!(problems.len(), 1, "{problems:#?}");
        assert_eq!(problems[0].target.as_deref(), Some(&*format!("{ok}b")));
        assert_eq!(problems[0].line, Some(4));
        assert!(problems[0].message.contains("at most 128"));
    }

    /// The rule is exactly the OCI tag's, `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
    #[rstest]
    #[case::json_name("x.json", true)]
    #[case::version("v1.2.3", true)]
    #[case::underscore_first("_x", true)]
    #[case::dots("a..b", true)]
    #[case::store_file("inodes", true)]
    #[case::digit_first("1", true)]
    #[case::longest(&"z".repeat(128), true)]
    #[case::too_long(&"z".repeat(129), false)]
    #[case::dot_first(".x", false)]
    #[case::dash_first("-x", false)]
    #[case::colon("a:b", false)]
    #[case::plus("a+b", false)]
    #[case::non_ascii("é", false)]
    #[case::nothing("", false)]
    fn target_names_are_oci_tags(#[case] name: &str, #[case] valid: bool) {
        assert_eq!(tag_name_problem(name).is_none(), valid, "{name:?}");
    }

    #[test]
    fn every_problem_is_reported_together() {
        let spec = "\
a:
  base: nope
  run: x
b:
  base: empty
  colour: blue
  expand: missing.tar
c:
  base: empty
  copy: missing /x
  install: missing.rpm
d:
  base: empty
";
        let problems = problems(spec, &[]);
        let got: Vec<_> = problems
            .iter()
            .map(|p| (p.target.as_deref().unwrap(), p.key.as_deref(), p.line))
            .collect();
        // b's shape error hides its other keys: they are not checked until
        // the target parses.
        assert_eq!(
            got,
            [
                ("a", Some("base"), Some(2)),
                ("b", Some("colour"), Some(6)),
                ("c", Some("copy"), Some(10)),
                ("c", Some("install"), Some(11)),
                ("d", None, Some(12)),
            ]
        );
        let text = SpecError { problems }.to_string();
        assert_eq!(text.lines().count(), 5);
        assert!(
            text.contains("spec.yaml:10: target c, key copy: missing: "),
            "{text}"
        );
    }

    // Long by design: one spec that uses every key, checked field by field.
    #[test]
    fn a_good_spec_is_ordered_and_resolved() {
        let spec = r#"
# the base comes last in the file but builds first
app:
  base: os
  copy: ["conf/app.conf ../../etc/app/", "'my file' opt/x", "conf /etc/conf"]
  run:
    - scripts/setup.sh
    - |
      echo scripts/setup.sh
    - echo hi
  entrypoint: /bin/echo "hello world"
  network: none
os:
  base: empty
  expand: "./rootfs.tar extra.tar.gz"
  install: [pkgs/a.deb, "https://example.com/b.rpm"]
tool:
  base: debian
  env: [A=1]
"#;
        let (dir, result) = load_spec(
            spec,
            &[
                "rootfs.tar",
                "extra.tar.gz",
                "pkgs/a.deb",
                "conf/app.conf",
                "my file",
                "scripts/setup.sh",
            ],
            &["debian"],
        );
        let plan = result.unwrap_or_else(|e| panic!("{e}"));
        let root = dir.path();
        assert_eq!(plan.dir, root);
        assert_eq!(plan.file, root.join("spec.yaml"));
        let names: Vec<_> = plan.targets.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["os", "app", "tool"]);

        let [os, app, tool] = &plan.targets[..] else {
            unreachable!()
        };
        assert_eq!((os.line, app.line, tool.line), (13, 3, 17));
        assert_eq!(os.base, Base::Empty);
        assert_eq!(app.base, Base::Tag("os".into()));
        assert_eq!(tool.base, Base::Tag("debian".into()));
        assert_eq!(
            os.expand,
            [root.join("rootfs.tar"), root.join("extra.tar.gz")]
        );
        assert_eq!(
            os.install,
            [
                Package::File(root.join("pkgs/a.deb")),
                Package::Url("https://example.com/b.rpm".into())
            ]
        );
        assert_eq!(
            app.copy,
            [
                CopyItem {
                    src: root.join("conf/app.conf"),
                    dest: "/etc/app/".into()
                },
                CopyItem {
                    src: root.join("my file"),
                    dest: "/opt/x".into()
                },
                CopyItem {
                    src: root.join("conf"),
                    dest: "/etc/conf".into()
                },
            ]
        );
        // Items as written: the same spec elsewhere gives the same history.
        assert_eq!(
            os.summary,
            "expand ./rootfs.tar; expand extra.tar.gz; install pkgs/a.deb; install https://example.com/b.rpm"
        );
        assert_eq!(
            app.summary,
            "copy conf/app.conf ../../etc/app/; copy 'my file' opt/x; copy conf /etc/conf; run 3 steps; config entrypoint"
        );
        assert_eq!(tool.summary, "config env");
        assert_eq!(
            app.run,
            [
                RunItem::File(root.join("scripts/setup.sh")),
                RunItem::Script("echo scripts/setup.sh\n".into()),
                RunItem::Script("echo hi".into()),
            ]
        );
        assert_eq!(
            app.config.entrypoint,
            Some(vec!["/bin/echo".to_string(), "hello world".to_string()])
        );
        assert_eq!(app.network, Network::None);
        assert_eq!(tool.config.env["A"], "1");
        assert_eq!(
            os.stanza,
            r#"{"base":"empty","expand":"./rootfs.tar extra.tar.gz","install":["pkgs/a.deb","https://example.com/b.rpm"]}"#
        );
        let copied = app.copy.iter().map(|c| c.src.clone());
        let scripts = app.run.iter().filter_map(|r| match r {
            RunItem::File(f) => Some(f.clone()),
            RunItem::Script(_) => None,
        });
        assert_eq!(
            copied.chain(scripts).collect::<Vec<_>>(),
            [
                root.join("conf/app.conf"),
                root.join("my file"),
                root.join("conf"),
                root.join("scripts/setup.sh"),
            ]
        );
    }

    #[test]
    fn the_layout_is_asked_only_about_bases_outside_the_spec() {
        let dir = tempfile::tempdir().unwrap();
        let spec = dir.path().join("s.yaml");
        std::fs::write(
            &spec,
            "a:\n  base: b\n  run: x\nb:\n  base: ext\n  run: x\n",
        )
        .unwrap();
        let asked = std::cell::RefCell::new(Vec::new());
        let plan = load(&spec, &|t| {
            asked.borrow_mut().push(t.to_owned());
            true
        })
        .unwrap();
        assert_eq!(*asked.borrow(), ["ext"]);
        assert_eq!(plan.targets[0].name, "b");
    }

    #[test]
    fn an_unreadable_spec_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.yaml");
        let e = load(&missing, &|_| false).unwrap_err();
        assert_eq!(e.problems.len(), 1);
        assert!(e
            .to_string()
            .starts_with(&format!("{}: cannot read", missing.display())));
    }

    #[rstest]
    #[case::absolute("/etc/x", "/etc/x")]
    #[case::relative("etc/x", "/etc/x")]
    #[case::climbing("../../x", "/x")]
    #[case::inner_dots("/a/./b/../c", "/a/c")]
    #[case::into_dir("opt/", "/opt/")]
    #[case::root("/", "/")]
    #[case::above_root("..", "/")]
    #[case::doubled("//a//b", "/a/b")]
    fn image_paths_stay_inside(#[case] dest: &str, #[case] want: &str) {
        assert_eq!(image_path(dest), want);
    }

    #[rstest]
    #[case::target("a", None, Some(3))]
    #[case::quoted_target("q.1", None, Some(9))]
    #[case::key("a", Some("run"), Some(5))]
    #[case::key_after_script("a", Some("base"), Some(8))]
    #[case::prefix_is_not_the_key("ab", None, Some(10))]
    #[case::key_of_other_target("ab", Some("run"), None)]
    #[case::inline_target("ab", Some("base"), None)]
    #[case::absent("zz", None, None)]
    fn locator_finds_lines(
        #[case] target: &str,
        #[case] key: Option<&str>,
        #[case] line: Option<usize>,
    ) {
        let text = "\
# header
---
a:
  # comment
  run: |
    base: not this one
# a comment at column 0 does not end the block
  base: empty
\"q.1\": {}
ab: {base: a}
";
        let locator = Locator::new(text);
        let got = match key {
            Some(k) => locator.key(target, k),
            None => locator.target(target),
        };
        assert_eq!(got, line);
    }
}
