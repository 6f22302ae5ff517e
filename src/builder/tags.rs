//! Tag names: `NAME` moves with every build, `NAME-YYYY-MM-DD_N` records it.

use oci_spec::image::Descriptor;
use sha2::Digest;

/// The index annotation that marks a dated tag genoci made, the only tags
/// `gc` prunes: a tag of the same shape copied in by another tool, or given
/// to `checkin` by hand, is the user's.
pub const DATED_ANNOTATION: &str = "dev.genoci.dated";

/// `desc` marked as the target of a dated tag genoci made.
pub fn mark_dated(desc: &Descriptor) -> Descriptor {
    let mut desc = desc.clone();
    let mut annotations = desc.annotations().clone().unwrap_or_default();
    annotations.insert(DATED_ANNOTATION.to_string(), "true".to_string());
    desc.set_annotations(Some(annotations));
    desc
}

/// Whether the index entry `desc` is a dated tag genoci made.
pub fn is_marked_dated(desc: &Descriptor) -> bool {
    desc.annotations()
        .as_ref()
        .and_then(|a| a.get(DATED_ANNOTATION))
        .is_some_and(|v| v == "true")
}

/// The longest tag (distribution spec).
const MAX_TAG: usize = 128;
/// What a dated tag adds to its name: `-YYYY-MM-DD_NNN`.
const DATED_SUFFIX: usize = "-YYYY-MM-DD_NNN".len();
/// Hex digits of the name's hash in the dated tag of a long name.
const STEM_HASH: usize = 8;

/// What the dated tags of target `name` start with: the name, or, when
/// the dated tag would be longer than a tag may be, its head and a hash
/// of the whole (so two long names with one head never share dated tags,
/// and `gc` tells their generations apart).
pub fn dated_stem(name: &str) -> std::borrow::Cow<'_, str> {
    if name.len() + DATED_SUFFIX <= MAX_TAG {
        return name.into();
    }
    let head = &name[..MAX_TAG - DATED_SUFFIX - STEM_HASH - 1];
    let hash = hex::encode(sha2::Sha256::digest(name.as_bytes()));
    format!("{head}-{}", &hash[..STEM_HASH]).into()
}

/// `NAME-DATE_N` with N one above the highest for that name and date among
/// `existing` (NAME shortened by [`dated_stem`]).
pub fn next_dated(name: &str, date: &str, existing: &[String]) -> String {
    next_numbered(&format!("{}-{date}_", dated_stem(name)), existing)
}

/// The checkin default `YYYY-MM-DD_vN`.
pub fn next_checkin(date: &str, existing: &[String]) -> String {
    next_numbered(&format!("{date}_v"), existing)
}

/// `PREFIXN` with N one above the highest such tag in `existing`.
fn next_numbered(prefix: &str, existing: &[String]) -> String {
    let highest = existing
        .iter()
        .filter_map(|t| t.strip_prefix(prefix)?.parse::<u32>().ok())
        .max()
        .unwrap_or(0);
    format!("{prefix}{}", highest + 1)
}

/// If `tag` is a dated tag, the name it dates and its (date, N) for ordering.
pub fn parse_dated(tag: &str) -> Option<(&str, (&str, u32))> {
    let (rest, n) = tag.rsplit_once('_')?;
    let n: u32 = n.parse().ok()?;
    if rest.len() < 11 {
        return None;
    }
    let (name, date) = rest.split_at(rest.len() - 11);
    let date = date.strip_prefix('-')?;
    let b = date.as_bytes();
    let shape = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    (shape && !name.is_empty()).then_some((name, (date, n)))
}

/// Today's date for tags, in local time as a person reads a calendar.
pub fn today() -> String {
    chrono::Local::now().format("%Y-%m-%d").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dated_tags_of_long_names_are_tags_of_their_own() {
        let a = format!("{}a", "n".repeat(127));
        let b = format!("{}b", "n".repeat(127));
        let (ta, tb) = (
            next_dated(&a, "2026-01-02", &[]),
            next_dated(&b, "2026-01-02", &[]),
        );
        assert!(ta.len() <= MAX_TAG && tb.len() <= MAX_TAG, "{ta} {tb}");
        assert_ne!(parse_dated(&ta).unwrap().0, parse_dated(&tb).unwrap().0);
        assert_eq!(
            next_dated(&a, "2026-01-02", std::slice::from_ref(&ta)),
            ta.replace("_1", "_2")
        );
        let short = "n".repeat(MAX_TAG - DATED_SUFFIX);
        assert_eq!(dated_stem(&short), short);
    }

    #[test]
    fn dated_tags_count_up_per_day() {
        let existing = vec![
            "cirros-2026-01-02_1".to_string(),
            "cirros-2026-01-02_9".to_string(),
            "cirros-2026-01-01_12".to_string(),
            "cirros-extra-2026-01-02_40".to_string(),
        ];
        assert_eq!(
            next_dated("cirros", "2026-01-02", &existing),
            "cirros-2026-01-02_10"
        );
        assert_eq!(
            next_dated("cirros", "2026-01-03", &existing),
            "cirros-2026-01-03_1"
        );
        assert_eq!(
            next_checkin("2026-01-02", &["2026-01-02_v3".into()]),
            "2026-01-02_v4"
        );
    }

    #[test]
    fn parses_dated_tags() {
        assert_eq!(
            parse_dated("a-b-2026-01-02_3"),
            Some(("a-b", ("2026-01-02", 3)))
        );
        assert_eq!(parse_dated("cirros"), None);
        assert_eq!(parse_dated("2026-01-02_v3"), None);
    }
}
