//! The spec as YAML gives it: shape only, no I/O.
//!
//! A spec is a mapping of target name → target. Each target deserializes
//! into a [`RawTarget`] whose fields already have their normal form (lists
//! of strings, split commands, `PORT/PROTO` ports); whether files exist and
//! bases resolve is the business of [`super::plan`].

use std::fmt;

use indexmap::IndexMap;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use yaml_serde::Value;

use super::Network;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RawError {
    #[error("{message}")]
    Yaml {
        /// 1-based, when the parser knows it.
        line: Option<usize>,
        message: String,
    },
    #[error("the spec must be a mapping of target names to targets")]
    NotAMapping,
    #[error("target name {0} is not a string")]
    BadName(String),
    #[error("unterminated {0} quote")]
    UnterminatedQuote(char),
    #[error("backslash at the end")]
    TrailingBackslash,
}

/// One key of a target that does not have the expected shape; `key` is
/// `None` when the target itself is not a mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError {
    pub key: Option<String>,
    pub message: String,
}

/// One target as written. Absent keys take their empty value; `base` is
/// optional here so that a missing base is reported with the other
/// problems of the spec rather than as a parse failure.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    #[serde(default)]
    pub base: Option<String>,
    #[serde(default, deserialize_with = "space_separated")]
    pub expand: Vec<String>,
    #[serde(default, deserialize_with = "one_or_many")]
    pub copy: Vec<String>,
    #[serde(default, deserialize_with = "space_separated")]
    pub install: Vec<String>,
    #[serde(default, deserialize_with = "one_or_many")]
    pub run: Vec<String>,
    #[serde(default, deserialize_with = "one_or_many")]
    pub pre: Vec<String>,
    #[serde(default, deserialize_with = "one_or_many")]
    pub post: Vec<String>,
    #[serde(default, deserialize_with = "command")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, deserialize_with = "command")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, deserialize_with = "env")]
    pub env: IndexMap<String, String>,
    #[serde(default)]
    pub workdir: Option<String>,
    #[serde(default, deserialize_with = "user")]
    pub user: Option<String>,
    #[serde(default, deserialize_with = "scalar_map")]
    pub labels: IndexMap<String, String>,
    #[serde(default, deserialize_with = "scalar_map")]
    pub annotations: IndexMap<String, String>,
    #[serde(default, deserialize_with = "one_or_many")]
    pub volumes: Vec<String>,
    #[serde(default, deserialize_with = "ports")]
    pub ports: Vec<String>,
    #[serde(default, deserialize_with = "network")]
    pub network: Network,
    #[serde(default)]
    pub author: Option<String>,
    /// Run steps and installs without the sandbox's confinement.
    #[serde(default)]
    pub privileged: bool,
}

impl RawTarget {
    /// Deserialize one target, reporting every key that has the wrong shape
    /// (serde alone stops at the first).
    pub fn from_yaml(value: &Value) -> Result<RawTarget, Vec<KeyError>> {
        let whole = match RawTarget::deserialize(value) {
            Ok(target) => return Ok(target),
            Err(e) => e,
        };
        let Value::Mapping(map) = value else {
            return Err(vec![KeyError {
                key: None,
                message: "a target must be a mapping of keys".into(),
            }]);
        };
        let errors: Vec<KeyError> = map
            .iter()
            .filter_map(|(key, v)| {
                let mut single = yaml_serde::Mapping::new();
                single.insert(key.clone(), v.clone());
                RawTarget::deserialize(&Value::Mapping(single))
                    .err()
                    .map(|e| KeyError {
                        key: Some(scalar_text(key).unwrap_or_else(|| format!("{key:?}"))),
                        message: e.to_string(),
                    })
            })
            .collect();
        if errors.is_empty() {
            Err(vec![KeyError {
                key: None,
                message: whole.to_string(),
            }])
        } else {
            Err(errors)
        }
    }
}

/// Parse the spec text into target name → YAML value, in file order.
/// YAML merge keys (`<<: *anchor`) are applied so targets can share stanzas.
pub fn document(text: &str) -> Result<IndexMap<String, Value>, RawError> {
    let yaml_error = |e: yaml_serde::Error| RawError::Yaml {
        line: e.location().map(|l| l.line()),
        message: e.to_string(),
    };
    let mut doc: Value = yaml_serde::from_str(text).map_err(yaml_error)?;
    doc.apply_merge().map_err(yaml_error)?;
    match doc {
        Value::Null => Ok(IndexMap::new()),
        Value::Mapping(map) => map
            .into_iter()
            .map(|(key, value)| match scalar_text(&key) {
                Some(name) if !key.is_null() => Ok((name, value)),
                _ => Err(RawError::BadName(format!("{key:?}"))),
            })
            .collect(),
        _ => Err(RawError::NotAMapping),
    }
}

/// Split a command line into words the way a POSIX shell would, without
/// expansions: blanks separate words, single quotes keep everything,
/// double quotes keep everything but `\"`, `\\`, `\$` and `` \` ``, and a
/// backslash outside quotes keeps the next character.
pub fn split_words(line: &str) -> Result<Vec<String>, RawError> {
    let mut words = Vec::new();
    let mut word = String::new();
    // A word can be empty (`''`), so "inside a word" is tracked apart from its text.
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err(RawError::UnterminatedQuote('\'')),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some('\n') => {}
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err(RawError::UnterminatedQuote('"')),
                        },
                        Some(c) => word.push(c),
                        None => return Err(RawError::UnterminatedQuote('"')),
                    }
                }
            }
            '\\' => match chars.next() {
                // Backslash-newline continues the line.
                Some('\n') => {}
                Some(c) => {
                    in_word = true;
                    word.push(c);
                }
                None => return Err(RawError::TrailingBackslash),
            },
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// The text of a YAML scalar (`null` is the empty string), `None` for
/// sequences, mappings and tagged values.
fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::Null => Some(String::new()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => Some(s.clone()),
        Value::Sequence(_) | Value::Mapping(_) | Value::Tagged(_) => None,
    }
}

/// Any YAML scalar as a string: labels and env values are strings in the
/// image config, but `version: 2` or `debug: true` are natural to write.
struct Scalar(String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_owned()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Scalar, E> {
                Ok(Scalar(String::new()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A string, or a list of strings; `split` turns the single string into
/// items (the list form is taken as written).
fn string_list<'de, D: Deserializer<'de>>(
    d: D,
    expecting: &'static str,
    split: fn(&str) -> Result<Vec<String>, RawError>,
) -> Result<Vec<String>, D::Error> {
    struct V {
        expecting: &'static str,
        split: fn(&str) -> Result<Vec<String>, RawError>,
    }
    impl<'de> Visitor<'de> for V {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str(self.expecting)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<String>, E> {
            (self.split)(v).map_err(E::custom)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Vec<String>, E> {
            Ok(Vec::new())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
            let mut items = Vec::new();
            // `- true` or `- 10` in a list means the text, as in a script.
            while let Some(Scalar(item)) = seq.next_element::<Scalar>()? {
                items.push(item);
            }
            Ok(items)
        }
    }
    d.deserialize_any(V { expecting, split })
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    string_list(d, "a string or a list of strings", |s| {
        Ok(vec![s.to_owned()])
    })
}

fn space_separated<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    string_list(
        d,
        "a string of space-separated items or a list of strings",
        |s| Ok(s.split_whitespace().map(str::to_owned).collect()),
    )
}

fn command<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    string_list(d, "a command line or a list of words", split_words).map(Some)
}

fn env<'de, D: Deserializer<'de>>(d: D) -> Result<IndexMap<String, String>, D::Error> {
    struct V;
    fn check<E: de::Error>(name: &str) -> Result<(), E> {
        if name.is_empty() || name.contains('=') {
            return Err(E::custom(format!(
                "invalid variable name {name:?}: it must be non-empty and have no '='"
            )));
        }
        Ok(())
    }
    impl<'de> Visitor<'de> for V {
        type Value = IndexMap<String, String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a mapping NAME: value or a list of NAME=value")
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(IndexMap::new())
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            let env = scalar_entries(map)?;
            env.keys().try_for_each(|name| check(name))?;
            Ok(env)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut env = IndexMap::new();
            while let Some(item) = seq.next_element::<String>()? {
                let Some((name, value)) = item.split_once('=') else {
                    return Err(de::Error::custom(format!("{item:?} is not NAME=value")));
                };
                check(name)?;
                env.insert(name.to_owned(), value.to_owned());
            }
            Ok(env)
        }
    }
    d.deserialize_any(V)
}

fn scalar_map<'de, D: Deserializer<'de>>(d: D) -> Result<IndexMap<String, String>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = IndexMap<String, String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a mapping of names to values")
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(IndexMap::new())
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            scalar_entries(map)
        }
    }
    d.deserialize_any(V)
}

fn scalar_entries<'de, A: MapAccess<'de>>(
    mut map: A,
) -> Result<IndexMap<String, String>, A::Error> {
    let mut entries = IndexMap::new();
    while let Some((Scalar(name), Scalar(value))) = map.next_entry::<Scalar, Scalar>()? {
        entries.insert(name, value);
    }
    Ok(entries)
}

fn user<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = Option<String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a user name, a uid, or USER:GROUP")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(v.to_owned()))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    d.deserialize_any(V)
}

/// `80` → `80/tcp`; `53/UDP` → `53/udp`; a range `8000-8002/tcp` → one
/// entry per port, as docker stores `EXPOSE` in `ExposedPorts`. The
/// protocols are those of the image spec's `ExposedPorts`.
fn port<E: de::Error>(text: &str) -> Result<Vec<String>, E> {
    let invalid = || {
        E::custom(format!(
            "invalid port {text:?}: expected PORT, PORT-PORT, optionally /tcp, /udp or /sctp, PORT in 1-65535"
        ))
    };
    let (numbers, proto) = text.split_once('/').unwrap_or((text, "tcp"));
    let proto = proto.to_ascii_lowercase();
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(invalid());
    }
    let number = |n: &str| n.parse::<u16>().ok().filter(|&n| n > 0);
    let (first, last) = match numbers.split_once('-') {
        Some((a, b)) => (number(a), number(b)),
        None => (number(numbers), number(numbers)),
    };
    match (first, last) {
        (Some(first), Some(last)) if first <= last => {
            Ok((first..=last).map(|n| format!("{n}/{proto}")).collect())
        }
        _ => Err(invalid()),
    }
}

fn ports<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a port, PORT/PROTO, a range PORT-PORT[/PROTO], or a list of them")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            port(v)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            port(&v.to_string())
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            port(&v.to_string())
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut ports = Vec::new();
            while let Some(Scalar(item)) = seq.next_element::<Scalar>()? {
                ports.extend(port(&item)?);
            }
            Ok(ports)
        }
    }
    d.deserialize_any(V)
}

fn network<'de, D: Deserializer<'de>>(d: D) -> Result<Network, D::Error> {
    match String::deserialize(d)?.as_str() {
        "host" => Ok(Network::Host),
        "none" => Ok(Network::None),
        other => Err(de::Error::custom(format!(
            "invalid network {other:?}: expected host or none"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    fn target(yaml: &str) -> Result<RawTarget, Vec<KeyError>> {
        RawTarget::from_yaml(&yaml_serde::from_str(yaml).unwrap())
    }

    #[rstest]
    #[case::plain("a b  c", &["a", "b", "c"])]
    #[case::double_quotes(r#"/bin/echo "hello world""#, &["/bin/echo", "hello world"])]
    #[case::single_quotes(r#"sh -c 'echo "$HOME" \n'"#, &["sh", "-c", r#"echo "$HOME" \n"#])]
    #[case::escapes_in_double_quotes(r#""a \"b\" \$c \\ \n""#, &[r#"a "b" $c \ \n"#])]
    #[case::backslash_outside(r"a\ b c\'d", &["a b", "c'd"])]
    #[case::empty_word(r#"x '' """#, &["x", "", ""])]
    #[case::adjacent_parts(r#"pre"mid"'post'"#, &["premidpost"])]
    #[case::continuation("a \\\n b", &["a", "b"])]
    #[case::blank("  \t ", &[])]
    fn splits_words(#[case] line: &str, #[case] words: &[&str]) {
        assert_eq!(split_words(line).unwrap(), words);
    }

    #[rstest]
    #[case::single("echo 'x", RawError::UnterminatedQuote('\''))]
    #[case::double(r#"echo "x\""#, RawError::UnterminatedQuote('"'))]
    #[case::backslash(r"echo \", RawError::TrailingBackslash)]
    fn split_errors(#[case] line: &str, #[case] error: RawError) {
        assert_eq!(split_words(line).unwrap_err(), error);
    }

    #[test]
    fn every_key_parses() {
        let t = target(
            r#"
base: empty
expand: "a.tar  b.tar"
copy: "src /dst"
install: [x.deb, "y z.rpm"]
run: |
  echo hi
pre: ["true"]
post: "echo post"
entrypoint: /bin/echo "hello world"
cmd: [a, "b c"]
env: {A: 1, B: "x=y", C: }
workdir: /w
user: 1000
labels: {version: 2, debug: true, ratio: 1.5}
annotations: {org.example: x}
volumes: /data
ports: [80, "53/udp", 8080/tcp]
network: none
author: A. U. Thor <a@example.org>
"#,
        );
        let t = t.unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(t.base.as_deref(), Some("empty"));
        assert_eq!(t.expand, ["a.tar", "b.tar"]);
        assert_eq!(t.copy, ["src /dst"]);
        assert_eq!(t.install, ["x.deb", "y z.rpm"]);
        assert_eq!(t.run, ["echo hi\n"]);
        assert_eq!(t.pre, ["true"]);
        assert_eq!(t.post, ["echo post"]);
        assert_eq!(
            t.entrypoint,
            Some(vec!["/bin/echo".into(), "hello world".into()])
        );
        assert_eq!(t.cmd, Some(vec!["a".into(), "b c".into()]));
        let env: Vec<_> = t
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(env, [("A", "1"), ("B", "x=y"), ("C", "")]);
        assert_eq!(t.workdir.as_deref(), Some("/w"));
        assert_eq!(t.user.as_deref(), Some("1000"));
        let labels: Vec<_> = t
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            labels,
            [("version", "2"), ("debug", "true"), ("ratio", "1.5")]
        );
        assert_eq!(t.annotations["org.example"], "x");
        assert_eq!(t.volumes, ["/data"]);
        assert_eq!(t.ports, ["80/tcp", "53/udp", "8080/tcp"]);
        assert_eq!(t.network, Network::None);
        assert_eq!(t.author.as_deref(), Some("A. U. Thor <a@example.org>"));
    }

    #[test]
    fn list_items_that_yaml_reads_as_numbers_or_booleans_are_their_text() {
        let t = target("base: x\nrun: [true, 'echo hi']\ncmd: [sleep, 10]").unwrap();
        assert_eq!(t.run, vec!["true", "echo hi"]);
        assert_eq!(t.cmd, Some(vec!["sleep".to_string(), "10".to_string()]));
    }

    #[test]
    fn absent_keys_are_empty() {
        let t = target("base: x").unwrap();
        assert_eq!(
            t,
            RawTarget {
                base: Some("x".into()),
                ..RawTarget::default()
            }
        );
        assert_eq!(t.network, Network::Host);
        assert!(!t.privileged);
        assert!(target("privileged: true").unwrap().privileged);
    }

    #[rstest]
    #[case::map("{A: b, C: d}")]
    #[case::list("[A=b, C=d]")]
    fn env_forms(#[case] env: &str) {
        let t = target(&format!("env: {env}")).unwrap();
        let env: Vec<_> = t
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(env, [("A", "b"), ("C", "d")]);
    }

    #[rstest]
    #[case::number("80", &["80/tcp"])]
    #[case::string("'53/udp'", &["53/udp"])]
    #[case::list("[80, 443/tcp, '53/udp', 9/sctp]", &["80/tcp", "443/tcp", "53/udp", "9/sctp"])]
    #[case::upper_case_proto("[80/TCP, 53/Udp]", &["80/tcp", "53/udp"])]
    #[case::range("8000-8002", &["8000/tcp", "8001/tcp", "8002/tcp"])]
    #[case::range_proto("[7-8/UDP, 9-9]", &["7/udp", "8/udp", "9/tcp"])]
    fn port_forms(#[case] ports: &str, #[case] want: &[&str]) {
        assert_eq!(target(&format!("ports: {ports}")).unwrap().ports, want);
    }

    #[rstest]
    #[case::unknown_key("base: x\nrunn: y", "runn", "unknown field `runn`")]
    #[case::bad_port("ports: 70000", "ports", "invalid port")]
    #[case::bad_proto("ports: 80/icmp", "ports", "invalid port")]
    #[case::reversed_range("ports: 8002-8000", "ports", "invalid port")]
    #[case::open_range("ports: 8000-", "ports", "invalid port")]
    #[case::zero_in_range("ports: 0-2", "ports", "invalid port")]
    #[case::env_item("env: [NOVALUE]", "env", "is not NAME=value")]
    #[case::env_name("env: {'': x}", "env", "invalid variable name")]
    #[case::network("network: bridge", "network", "invalid network")]
    #[case::privileged("privileged: yes please", "privileged", "expected a boolean")]
    #[case::quote("cmd: echo 'x", "cmd", "unterminated ' quote")]
    #[case::run_map("run: {a: b}", "run", "a string or a list of strings")]
    #[case::label_list("labels: {a: [1]}", "labels", "a string, number or boolean")]
    fn shape_errors_name_the_key(#[case] yaml: &str, #[case] key: &str, #[case] message: &str) {
        let errors = target(yaml).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].key.as_deref(), Some(key));
        assert!(errors[0].message.contains(message), "{errors:?}");
    }

    #[test]
    fn every_bad_key_is_reported() {
        let errors = target("base: x\nfoo: 1\nports: -1\nbar: 2").unwrap_err();
        let keys: Vec<_> = errors.iter().map(|e| e.key.as_deref().unwrap()).collect();
        assert_eq!(keys, ["foo", "ports", "bar"]);
    }

    #[test]
    fn a_target_must_be_a_mapping() {
        let errors = target("just a string").unwrap_err();
        assert_eq!(errors[0].key, None);
    }

    #[test]
    fn document_keeps_file_order_and_applies_merges() {
        let doc =
            document("z: &common {base: empty}\na:\n  <<: *common\n  run: x\n5: {}\n").unwrap();
        assert_eq!(doc.keys().collect::<Vec<_>>(), ["z", "a", "5"]);
        assert_eq!(
            RawTarget::from_yaml(&doc["a"]).unwrap().base.as_deref(),
            Some("empty")
        );
    }

    #[rstest]
    #[case::syntax("a:\n  b: c\n   d: e\n", Some(3))]
    #[case::unclosed("a: [b\n", Some(2))]
    #[case::duplicate("a: {}\nb:\n  base: x\n  base: y\n", Some(3))]
    fn document_errors_carry_the_line(#[case] text: &str, #[case] line: Option<usize>) {
        match document(text).unwrap_err() {
            RawError::Yaml { line: got, .. } => assert_eq!(got, line),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn document_shape_errors() {
        assert_eq!(document("[a, b]").unwrap_err(), RawError::NotAMapping);
        assert!(matches!(
            document("~: {}").unwrap_err(),
            RawError::BadName(_)
        ));
        assert!(document("").unwrap().is_empty());
    }
}
