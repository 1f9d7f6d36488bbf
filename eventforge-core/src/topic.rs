//! Topics and subscription patterns: the addresses of the messages layer.
//!
//! Topics are `.`-separated segments. A [`Pattern`] is parsed and validated
//! once, at subscribe time; `*` matches one segment and `**` one or more.
//! [`PatternTrie`](crate::PatternTrie) finds the patterns that match a
//! topic; [`MATCH_TABLE`] is the one definition every transport follows.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::error::{Error, Result};

/// One segment of a [`Pattern`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Segment {
    /// Matches exactly this text.
    Literal(Box<str>),
    /// `*`: exactly one segment of one or more characters.
    Star,
    /// `**`: one or more whole segments.
    DoubleStar,
}

/// A validated subscription pattern.
///
/// - `*` matches exactly one segment (one or more characters, no `.`);
/// - `**` matches one or more whole segments, in any position;
/// - any other segment matches itself.
///
/// Empty patterns, empty segments (`a..b`, `.a`, `a.`) and segments that mix
/// a wildcard with text (`a**`, `**b`, `a*`, `***`) are rejected with
/// [`Error::InvalidPattern`].
///
/// ```
/// use eventforge_core::Pattern;
///
/// let p: Pattern = "orders.*.created".parse()?;
/// assert!(p.matches("orders.eu.created"));
/// assert!(!p.matches("orders.eu.west.created"));
///
/// let all = Pattern::parse("orders.**")?;
/// assert!(all.matches("orders.eu.west.created"));
/// assert!(!all.matches("orders"));
///
/// assert!(Pattern::parse("orders.**x").is_err());
/// # Ok::<(), eventforge_core::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Pattern {
    // The text as given, kept for display and for brokers that take it as is.
    text: Arc<str>,
    segments: Arc<[Segment]>,
}

impl Pattern {
    /// Parses and validates a pattern.
    pub fn parse(text: &str) -> Result<Self> {
        let invalid = |reason| Error::InvalidPattern {
            pattern: text.to_owned(),
            reason,
        };
        if text.is_empty() {
            return Err(invalid("a pattern cannot be empty"));
        }
        let segments = text
            .split('.')
            .map(|segment| match segment {
                "" => Err(invalid(
                    "empty segment (two dots in a row, or a leading or trailing dot)",
                )),
                "*" => Ok(Segment::Star),
                "**" => Ok(Segment::DoubleStar),
                s if s.contains('*') => Err(invalid(
                    "a wildcard must be a whole segment: use `*` or `**` between dots",
                )),
                s => Ok(Segment::Literal(s.into())),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Pattern {
            text: text.into(),
            segments: segments.into(),
        })
    }

    /// A pattern that matches exactly `topic` (after validating it as a topic).
    pub fn exact(topic: &str) -> Result<Self> {
        validate_topic(topic)?;
        Self::parse(topic)
    }

    /// The pattern as text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The parsed segments.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// True when the pattern has no wildcard.
    pub fn is_exact(&self) -> bool {
        self.segments
            .iter()
            .all(|s| matches!(s, Segment::Literal(_)))
    }

    /// True when `topic` matches this pattern.
    pub fn matches(&self, topic: &str) -> bool {
        fn go(pattern: &[Segment], mut topic: Segments<'_>) -> bool {
            let Some((first, rest)) = pattern.split_first() else {
                return topic.next().is_none();
            };
            let Some(segment) = topic.next() else {
                return false;
            };
            match first {
                Segment::Literal(text) => **text == *segment && go(rest, topic),
                Segment::Star => !segment.is_empty() && go(rest, topic),
                Segment::DoubleStar => loop {
                    if go(rest, topic.clone()) {
                        break true;
                    }
                    if topic.next().is_none() {
                        break false;
                    }
                },
            }
        }
        go(&self.segments, segments(topic))
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", &*self.text)
    }
}

impl FromStr for Pattern {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Pattern::parse(s)
    }
}

impl TryFrom<&str> for Pattern {
    type Error = Error;
    fn try_from(s: &str) -> Result<Self> {
        Pattern::parse(s)
    }
}

impl TryFrom<String> for Pattern {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Pattern::parse(&s)
    }
}

impl TryFrom<&String> for Pattern {
    type Error = Error;
    fn try_from(s: &String) -> Result<Self> {
        Pattern::parse(s)
    }
}

/// Anything a pattern can be made from: `&str`, `String` or a [`Pattern`].
pub trait IntoPattern {
    /// Parses (or passes through) the pattern.
    fn into_pattern(self) -> Result<Pattern>;
}

impl IntoPattern for Pattern {
    fn into_pattern(self) -> Result<Pattern> {
        Ok(self)
    }
}

impl IntoPattern for &Pattern {
    fn into_pattern(self) -> Result<Pattern> {
        Ok(self.clone())
    }
}

impl IntoPattern for &str {
    fn into_pattern(self) -> Result<Pattern> {
        Pattern::parse(self)
    }
}

impl IntoPattern for String {
    fn into_pattern(self) -> Result<Pattern> {
        Pattern::parse(&self)
    }
}

impl IntoPattern for &String {
    fn into_pattern(self) -> Result<Pattern> {
        Pattern::parse(self)
    }
}

/// Topics with up to this many segments are matched without allocating.
pub(crate) const INLINE_SEGMENTS: usize = 16;

/// The `.`-separated segments of a topic, empty ones included.
///
/// Topics are short: a plain byte scan beats `str::split`, whose generic
/// searcher costs more than the rest of a trie lookup.
pub(crate) fn segments(topic: &str) -> Segments<'_> {
    Segments { rest: Some(topic) }
}

#[derive(Clone)]
pub(crate) struct Segments<'a> {
    rest: Option<&'a str>,
}

impl<'a> Iterator for Segments<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let rest = self.rest?;
        match rest.bytes().position(|b| b == b'.') {
            Some(dot) => {
                self.rest = Some(&rest[dot + 1..]);
                Some(&rest[..dot])
            }
            None => {
                self.rest = None;
                Some(rest)
            }
        }
    }
}

/// Checks that `topic` can be published on: not empty, no empty segment, no wildcard.
pub fn validate_topic(topic: &str) -> Result<()> {
    let invalid = |reason| {
        Err(Error::InvalidTopic {
            topic: topic.to_owned(),
            reason,
        })
    };
    if topic.is_empty() {
        return invalid("a topic cannot be empty");
    }
    for segment in segments(topic) {
        if segment.is_empty() {
            return invalid("empty segment (two dots in a row, or a leading or trailing dot)");
        }
        if segment.contains('*') {
            return invalid("a topic is concrete: wildcards belong in subscription patterns");
        }
    }
    Ok(())
}

/// The reference table of pattern matching: `(pattern, topic, matches)`.
///
/// Every transport must agree with it on the wire; the transport conformance
/// suite replays it against each one.
pub const MATCH_TABLE: &[(&str, &str, bool)] = &[
    // literals
    ("a.b.c", "a.b.c", true),
    ("a.b.c", "a.b", false),
    ("a.b", "a.b.c", false),
    ("a.b.c", "a.b.cd", false),
    ("a", "a", true),
    // `*` at the start, middle, end
    ("*.b.c", "a.b.c", true),
    ("*.b.c", "b.c", false),
    ("*.b.c", "x.y.b.c", false),
    ("a.*.c", "a.b.c", true),
    ("a.*.c", "a.c", false),
    ("a.*.c", "a.b.b.c", false),
    ("a.b.*", "a.b.c", true),
    ("a.b.*", "a.b", false),
    ("a.b.*", "a.b.c.d", false),
    ("*", "a", true),
    ("*", "a.b", false),
    ("*.*", "a.b", true),
    ("*.*", "a", false),
    // `**` at the start, middle, end
    ("**.c", "a.b.c", true),
    ("**.c", "c", false),
    ("**.c", "a.c", true),
    ("**.c", "a.c.d", false),
    ("a.**.c", "a.b.c", true),
    ("a.**.c", "a.b.x.y.c", true),
    ("a.**.c", "a.c", false),
    ("a.**.c", "a.b.c.d", false),
    ("a.**", "a.b", true),
    ("a.**", "a.b.c.d", true),
    ("a.**", "a", false),
    ("a.**", "b.a.c", false),
    ("**", "a", true),
    ("**", "a.b.c", true),
    // several `**`
    ("**.**", "a", false),
    ("**.**", "a.b", true),
    ("**.**", "a.b.c.d", true),
    ("a.**.b.**", "a.x.b.y", true),
    ("a.**.b.**", "a.b.y", false),
    ("a.**.b.**", "a.x.y.b.z.w", true),
    ("a.**.b.**", "a.x.b", false),
    ("**.b.**", "a.b.c", true),
    ("**.b.**", "b.c", false),
    ("**.b.**", "a.b.b.b.c", true),
    // mixed
    ("*.**", "a", false),
    ("*.**", "a.b", true),
    ("**.*", "a.b.c", true),
    ("a.*.**.d", "a.b.c.d", true),
    ("a.*.**.d", "a.b.d", false),
    // near misses
    ("orders.*", "order.x", false),
    ("orders.*", "orders", false),
    ("orders.created", "orders.created.v2", false),
    ("dup.*", "dup.created", true),
    (
        "_reply.*",
        "_reply.3c37c411-e906-42a9-9498-0db502224ca8",
        true,
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_matches_follow_the_table() {
        for &(pattern, topic, expected) in MATCH_TABLE {
            let p = Pattern::parse(pattern).unwrap();
            assert_eq!(p.matches(topic), expected, "{pattern} vs {topic}");
        }
    }

    #[test]
    fn malformed_patterns_are_rejected_with_a_reason() {
        for bad in [
            "", ".", "a..b", ".a", "a.", "a**", "**b", "a.b**", "a*", "*a", "***", "a.*b.c",
        ] {
            match Pattern::parse(bad) {
                Err(Error::InvalidPattern { pattern, reason }) => {
                    assert_eq!(pattern, bad);
                    assert!(!reason.is_empty());
                }
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn topics_must_be_concrete() {
        assert!(validate_topic("a.b").is_ok());
        for bad in ["", "a..b", "a.*", "**", ".a"] {
            assert!(
                matches!(validate_topic(bad), Err(Error::InvalidTopic { .. })),
                "{bad:?}"
            );
        }
    }
}
