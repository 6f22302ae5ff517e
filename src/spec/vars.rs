//! Variable references in `env`, `workdir`, `user` and `labels` values,
//! with the forms docker's `ENV`, `WORKDIR`, `USER` and `LABEL` expand
//! (BuildKit's shell lexer): `$NAME`, `${NAME}`, `${NAME:-word}`, `${NAME-word}`,
//! `${NAME:+word}`, `${NAME+word}`, `${NAME:?message}`, `${NAME?message}`.
//!
//! Two choices differ from docker's lexer on purpose, because YAML already
//! did the quoting: quotes are plain characters, and a backslash escapes
//! only `$`, `\` (and `}` inside `${…}`); any other backslash is kept, so
//! that a label holding a regex or a Windows path means what it says.
//! The pattern forms (`${NAME#…}`, `${NAME%…}`, `${NAME/…}`) are refused
//! rather than half supported.

use std::iter::Peekable;
use std::str::CharIndices;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VarError {
    #[error("{0:?}: missing '}}' of a ${{…}}")]
    MissingBrace(String),
    #[error("{0:?}: bad substitution (a ${{…}} needs a variable name)")]
    BadSubstitution(String),
    #[error(
        "{text:?}: unsupported modifier {modifier:?} in ${{{name}…}} (supported: :- - :+ + :? ?)"
    )]
    Unsupported {
        text: String,
        name: String,
        modifier: String,
    },
    #[error("{name}: {message}")]
    Required { name: String, message: String },
}

/// One piece of a value: text taken as it is, or a variable reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Text(String),
    Var { name: String, op: Option<Op> },
}

/// What a `${NAME<op>word}` does when `NAME` is unset (or, with `colon`,
/// also when it is empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    pub kind: OpKind,
    pub colon: bool,
    pub word: Vec<Part>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// `-`: the word instead of the missing value.
    Default,
    /// `+`: the word only when the value is there.
    Alternative,
    /// `?`: a missing value is an error, the word its message.
    Required,
}

/// Parse `text` into parts; syntax errors are found here, so a spec is
/// checked before anything is built.
pub fn parse(text: &str) -> Result<Vec<Part>, VarError> {
    let mut p = Parser {
        text,
        chars: text.char_indices().peekable(),
    };
    p.parts(false)
}

/// Expand the references in `text`; `lookup` gives a variable's value, or
/// `None` when it is unset (which expands to nothing, as in docker).
pub fn expand(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, VarError> {
    let mut out = String::new();
    expand_parts(&parse(text)?, lookup, &mut out)?;
    Ok(out)
}

fn expand_parts(
    parts: &[Part],
    lookup: &dyn Fn(&str) -> Option<String>,
    out: &mut String,
) -> Result<(), VarError> {
    for part in parts {
        match part {
            Part::Text(t) => out.push_str(t),
            Part::Var { name, op: None } => out.push_str(&lookup(name).unwrap_or_default()),
            Part::Var { name, op: Some(op) } => {
                let value = lookup(name);
                let missing = match &value {
                    None => true,
                    Some(v) => op.colon && v.is_empty(),
                };
                match (op.kind, missing) {
                    (OpKind::Default, true) | (OpKind::Alternative, false) => {
                        expand_parts(&op.word, lookup, out)?
                    }
                    (OpKind::Required, true) => {
                        let mut message = String::new();
                        expand_parts(&op.word, lookup, &mut message)?;
                        if message.is_empty() {
                            message = match value {
                                None => "is not allowed to be unset",
                                Some(_) => "is not allowed to be empty",
                            }
                            .into();
                        }
                        return Err(VarError::Required {
                            name: name.clone(),
                            message,
                        });
                    }
                    (OpKind::Alternative, true) => {}
                    (OpKind::Default | OpKind::Required, false) => {
                        out.push_str(&value.unwrap_or_default())
                    }
                }
            }
        }
    }
    Ok(())
}

struct Parser<'a> {
    text: &'a str,
    chars: Peekable<CharIndices<'a>>,
}

impl Parser<'_> {
    fn peek(&mut self) -> Option<char> {
        self.chars.peek().map(|&(_, c)| c)
    }

    fn next(&mut self) -> Option<char> {
        self.chars.next().map(|(_, c)| c)
    }

    /// Parts up to the end of the text, or (`in_braces`) up to and
    /// including the `}` that closes a `${NAME<op>word}`.
    fn parts(&mut self, in_braces: bool) -> Result<Vec<Part>, VarError> {
        let mut parts = Vec::new();
        let mut text = String::new();
        while let Some(c) = self.next() {
            match c {
                '}' if in_braces => {
                    flush(&mut text, &mut parts);
                    return Ok(parts);
                }
                '\\' => match self.peek() {
                    Some(e @ ('$' | '\\')) => {
                        self.next();
                        text.push(e);
                    }
                    Some('}') if in_braces => {
                        self.next();
                        text.push('}');
                    }
                    _ => text.push('\\'),
                },
                '$' => match self.reference()? {
                    Some(var) => {
                        flush(&mut text, &mut parts);
                        parts.push(var);
                    }
                    None => text.push('$'),
                },
                c => text.push(c),
            }
        }
        if in_braces {
            return Err(VarError::MissingBrace(self.text.to_owned()));
        }
        flush(&mut text, &mut parts);
        Ok(parts)
    }

    /// After a `$`: the reference, or `None` when no name follows (a lone
    /// `$` is text).
    fn reference(&mut self) -> Result<Option<Part>, VarError> {
        if self.peek() != Some('{') {
            let name = self.name();
            return Ok((!name.is_empty()).then_some(Part::Var { name, op: None }));
        }
        self.next();
        let name = self.name();
        if name.is_empty() {
            return Err(match self.peek() {
                None => VarError::MissingBrace(self.text.to_owned()),
                Some(_) => VarError::BadSubstitution(self.text.to_owned()),
            });
        }
        let colon = self.peek() == Some(':');
        if colon {
            self.next();
        }
        let kind = match self.next() {
            Some('}') if !colon => return Ok(Some(Part::Var { name, op: None })),
            Some('-') => OpKind::Default,
            Some('+') => OpKind::Alternative,
            Some('?') => OpKind::Required,
            None => return Err(VarError::MissingBrace(self.text.to_owned())),
            Some(other) => {
                return Err(VarError::Unsupported {
                    text: self.text.to_owned(),
                    name,
                    modifier: format!("{}{other}", if colon { ":" } else { "" }),
                })
            }
        };
        let word = self.parts(true)?;
        Ok(Some(Part::Var {
            name,
            op: Some(Op { kind, colon, word }),
        }))
    }

    /// A variable name as docker reads one: digits only when it starts with
    /// a digit, one special parameter character (`$@`, `$?`, …), or
    /// letters, digits and `_`.
    fn name(&mut self) -> String {
        let mut name = String::new();
        match self.peek() {
            Some(c) if c.is_ascii_digit() => {
                while let Some(d) = self.peek().filter(char::is_ascii_digit) {
                    self.next();
                    name.push(d);
                }
            }
            Some(c @ ('@' | '*' | '#' | '?' | '-' | '$' | '!')) => {
                self.next();
                name.push(c);
            }
            _ => {
                while let Some(c) = self.peek().filter(|c| c.is_alphanumeric() || *c == '_') {
                    self.next();
                    name.push(c);
                }
            }
        }
        name
    }
}

fn flush(text: &mut String, parts: &mut Vec<Part>) {
    if !text.is_empty() {
        parts.push(Part::Text(std::mem::take(text)));
    }
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "PATH" => Some("/bin".into()),
            "EMPTY" => Some(String::new()),
            "A" => Some("a".into()),
            _ => None,
        }
    }

    #[rstest]
    #[case::plain_text("no refs here", "no refs here")]
    #[case::dollar_name("$PATH:/opt/bin", "/bin:/opt/bin")]
    #[case::braces("${PATH}x", "/binx")]
    #[case::name_ends_at_non_word("$A.$A-$A/", "a.a-a/")]
    #[case::unset_is_empty("[$NOPE]", "[]")]
    #[case::escaped_dollar(r"\$PATH", "$PATH")]
    #[case::escaped_backslash(r"\\$A", r"\a")]
    #[case::other_backslashes_kept(r"C:\dir\n", r"C:\dir\n")]
    #[case::quotes_are_text(r#"'$A' "$A""#, r#"'a' "a""#)]
    #[case::lone_dollar("5$ and $ and $", "5$ and $ and $")]
    #[case::default_unset("${NOPE:-d}", "d")]
    #[case::default_empty_colon("${EMPTY:-d}", "d")]
    #[case::default_empty_no_colon("${EMPTY-d}", "")]
    #[case::default_set("${A:-d}", "a")]
    #[case::default_is_expanded("${NOPE:-$A/${PATH}}", "a//bin")]
    #[case::alternative_set("${A:+x}", "x")]
    #[case::alternative_unset("${NOPE:+x}", "")]
    #[case::alternative_empty_colon("${EMPTY:+x}", "")]
    #[case::alternative_empty_no_colon("${EMPTY+x}", "x")]
    #[case::required_set("${A:?must}", "a")]
    #[case::escaped_brace_in_word(r"${NOPE:-a\}b}", "a}b")]
    #[case::digits_name("$1x", "x")]
    #[case::unicode_name("$é!", "!")]
    fn expands_as_docker(#[case] text: &str, #[case] want: &str) {
        assert_eq!(expand(text, &env).unwrap(), want);
    }

    #[rstest]
    #[case::missing_brace("${A", "missing '}'")]
    #[case::missing_brace_in_word("${A:-x", "missing '}'")]
    #[case::empty_name("${}", "bad substitution")]
    #[case::colon_name("${:x}", "bad substitution")]
    #[case::pattern("${A#x}", "unsupported modifier \"#\"")]
    #[case::replace("${A/x/y}", "unsupported modifier \"/\"")]
    #[case::colon_other("${A:=x}", "unsupported modifier \":=\"")]
    #[case::required_unset("${NOPE:?give NOPE}", "NOPE: give NOPE")]
    #[case::required_empty("${EMPTY:?}", "EMPTY: is not allowed to be empty")]
    #[case::required_unset_no_word("${NOPE?}", "NOPE: is not allowed to be unset")]
    fn errors(#[case] text: &str, #[case] message: &str) {
        let e = expand(text, &env).unwrap_err().to_string();
        assert!(e.contains(message), "{e}");
    }

    #[test]
    fn syntax_is_checked_without_values() {
        assert!(parse("${A:?x} $B").is_ok());
        assert!(parse("${A").is_err());
    }
}
