//! Topics and subscription patterns.
//!
//! Topics are `.`-separated segments. A [`Pattern`] is parsed and validated
//! once, at subscribe time; [`PatternTrie`] finds every pattern matching a
//! topic in time that depends on the topic, not on how many unrelated
//! patterns are stored (the segment trie NATS calls a sublist).

use std::collections::HashMap;
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
const INLINE_SEGMENTS: usize = 16;

/// The `.`-separated segments of a topic, empty ones included.
///
/// Topics are short: a plain byte scan beats `str::split`, whose generic
/// searcher costs more than the rest of a trie lookup.
fn segments(topic: &str) -> Segments<'_> {
    Segments { rest: Some(topic) }
}

#[derive(Clone)]
struct Segments<'a> {
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

/// Values stored under patterns, found by topic.
///
/// Lookup walks the topic's segments down the trie, following literal,
/// `*` and `**` branches, so its cost does not grow with unrelated patterns.
/// Each value is reported once per lookup even when a pattern with several
/// `**` matches a topic in more than one way.
///
/// ```
/// use eventforge_core::{Pattern, PatternTrie};
///
/// let mut trie = PatternTrie::new();
/// trie.insert(&Pattern::parse("a.*")?, 1);
/// trie.insert(&Pattern::parse("a.**")?, 2);
/// trie.insert(&Pattern::parse("b.c")?, 3);
///
/// let mut found = Vec::new();
/// trie.for_each_match("a.x", |v| found.push(*v));
/// found.sort();
/// assert_eq!(found, [1, 2]);
/// # Ok::<(), eventforge_core::Error>(())
/// ```
#[derive(Debug)]
pub struct PatternTrie<T> {
    root: Node<T>,
    len: usize,
}

#[derive(Debug)]
struct Node<T> {
    literal: HashMap<Box<str>, Node<T>>,
    star: Option<Box<Node<T>>>,
    double_star: Option<Box<Node<T>>>,
    // Values whose pattern ends at this node.
    values: Vec<T>,
    // How many `**` lie on the path to this node: from two on, a topic can
    // reach the node along several paths, and lookups must deduplicate.
    double_stars_above: u8,
}

impl<T> Node<T> {
    fn new(double_stars_above: u8) -> Self {
        Node {
            literal: HashMap::new(),
            star: None,
            double_star: None,
            values: Vec::new(),
            double_stars_above,
        }
    }

    fn is_empty(&self) -> bool {
        self.values.is_empty()
            && self.literal.is_empty()
            && self.star.is_none()
            && self.double_star.is_none()
    }
}

impl<T> Default for PatternTrie<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> PatternTrie<T> {
    /// An empty trie.
    pub fn new() -> Self {
        PatternTrie {
            root: Node::new(0),
            len: 0,
        }
    }

    /// Number of stored values.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Stores `value` under `pattern`.
    pub fn insert(&mut self, pattern: &Pattern, value: T) {
        let mut node = &mut self.root;
        for segment in pattern.segments() {
            let depth = node.double_stars_above;
            node = match segment {
                Segment::Literal(text) => node
                    .literal
                    .entry(text.clone())
                    .or_insert_with(|| Node::new(depth)),
                Segment::Star => node.star.get_or_insert_with(|| Box::new(Node::new(depth))),
                Segment::DoubleStar => node
                    .double_star
                    .get_or_insert_with(|| Box::new(Node::new(depth.saturating_add(1)))),
            };
        }
        node.values.push(value);
        self.len += 1;
    }

    /// Removes and returns the first value under `pattern` for which `pick`
    /// is true, pruning branches left empty.
    pub fn remove(&mut self, pattern: &Pattern, pick: impl Fn(&T) -> bool) -> Option<T> {
        fn go<T>(node: &mut Node<T>, rest: &[Segment], pick: &dyn Fn(&T) -> bool) -> Option<T> {
            let Some((first, rest)) = rest.split_first() else {
                let at = node.values.iter().position(pick)?;
                return Some(node.values.swap_remove(at));
            };
            match first {
                Segment::Literal(text) => {
                    let child = node.literal.get_mut(text)?;
                    let found = go(child, rest, pick);
                    if child.is_empty() {
                        node.literal.remove(text);
                    }
                    found
                }
                Segment::Star | Segment::DoubleStar => {
                    let slot = if *first == Segment::Star {
                        &mut node.star
                    } else {
                        &mut node.double_star
                    };
                    let child = slot.as_deref_mut()?;
                    let found = go(child, rest, pick);
                    if child.is_empty() {
                        *slot = None;
                    }
                    found
                }
            }
        }
        let found = go(&mut self.root, pattern.segments(), &pick);
        if found.is_some() {
            self.len -= 1;
        }
        found
    }

    /// Calls `visit` once for every value whose pattern matches `topic`.
    pub fn for_each_match(&self, topic: &str, mut visit: impl FnMut(&T)) {
        let mut seen: Vec<*const Node<T>> = Vec::new();
        // Split once: the walk branches, and re-splitting on every branch
        // cost more than the lookups themselves.
        let mut inline = [""; INLINE_SEGMENTS];
        let mut count = 0;
        let mut spilled = Vec::new();
        for segment in segments(topic) {
            if count < INLINE_SEGMENTS {
                inline[count] = segment;
            } else {
                if spilled.is_empty() {
                    spilled.extend_from_slice(&inline);
                }
                spilled.push(segment);
            }
            count += 1;
        }
        let segments = if spilled.is_empty() {
            &inline[..count]
        } else {
            &spilled[..]
        };
        self.root.walk(segments, &mut visit, &mut seen);
    }

    /// Calls `visit` for every stored value.
    pub fn for_each(&self, mut visit: impl FnMut(&T)) {
        fn go<T>(node: &Node<T>, visit: &mut dyn FnMut(&T)) {
            node.values.iter().for_each(&mut *visit);
            node.literal.values().for_each(|child| go(child, visit));
            node.star.iter().for_each(|child| go(child, visit));
            node.double_star.iter().for_each(|child| go(child, visit));
        }
        go(&self.root, &mut visit);
    }

    /// Calls `visit` with mutable access to every stored value, and drops the
    /// values for which it returns false.
    pub fn retain(&mut self, mut keep: impl FnMut(&mut T) -> bool) {
        fn go<T>(node: &mut Node<T>, keep: &mut dyn FnMut(&mut T) -> bool) -> usize {
            let before = node.values.len();
            node.values.retain_mut(&mut *keep);
            let mut removed = before - node.values.len();
            node.literal.retain(|_, child| {
                removed += go(child, keep);
                !child.is_empty()
            });
            for slot in [&mut node.star, &mut node.double_star] {
                if let Some(child) = slot.as_deref_mut() {
                    removed += go(child, keep);
                    if child.is_empty() {
                        *slot = None;
                    }
                }
            }
            removed
        }
        let removed = go(&mut self.root, &mut keep);
        self.len -= removed;
    }
}

impl<T> Node<T> {
    fn walk(&self, topic: &[&str], visit: &mut impl FnMut(&T), seen: &mut Vec<*const Node<T>>) {
        let Some((segment, rest)) = topic.split_first() else {
            if self.values.is_empty() {
                return;
            }
            if self.double_stars_above >= 2 {
                let me = self as *const Node<T>;
                if seen.contains(&me) {
                    return;
                }
                seen.push(me);
            }
            self.values.iter().for_each(visit);
            return;
        };
        if !self.literal.is_empty() {
            if let Some(child) = self.literal.get(*segment) {
                child.walk(rest, visit, seen);
            }
        }
        if let Some(child) = &self.star {
            if !segment.is_empty() {
                child.walk(rest, visit, seen);
            }
        }
        if let Some(child) = &self.double_star {
            // `**` takes one segment, then as many more as the rest allows.
            for taken in 1..=topic.len() {
                child.walk(&topic[taken..], visit, seen);
            }
        }
    }
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

    const TABLE: &[(&str, &str, bool)] = MATCH_TABLE;

    #[test]
    fn pattern_matches_follow_the_table() {
        for &(pattern, topic, expected) in TABLE {
            let p = Pattern::parse(pattern).unwrap();
            assert_eq!(p.matches(topic), expected, "{pattern} vs {topic}");
        }
    }

    #[test]
    fn trie_lookups_follow_the_table() {
        for &(pattern, topic, expected) in TABLE {
            let mut trie = PatternTrie::new();
            trie.insert(&Pattern::parse(pattern).unwrap(), ());
            let mut hits = 0;
            trie.for_each_match(topic, |_| hits += 1);
            assert_eq!(hits, usize::from(expected), "{pattern} vs {topic}");
        }
    }

    #[test]
    fn trie_reports_each_value_once_for_many_patterns_at_once() {
        let mut trie = PatternTrie::new();
        for (i, &(pattern, _, _)) in TABLE.iter().enumerate() {
            trie.insert(&Pattern::parse(pattern).unwrap(), i);
        }
        for &(_, topic, _) in TABLE {
            let mut found = Vec::new();
            trie.for_each_match(topic, |i| found.push(*i));
            found.sort_unstable();
            let expected: Vec<usize> = TABLE
                .iter()
                .enumerate()
                .filter(|(_, (p, _, _))| Pattern::parse(p).unwrap().matches(topic))
                .map(|(i, _)| i)
                .collect();
            assert_eq!(found, expected, "topic {topic}");
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

    #[test]
    fn removing_prunes_and_keeps_the_other_values() {
        let mut trie = PatternTrie::new();
        let p = Pattern::parse("a.*.c").unwrap();
        let q = Pattern::parse("a.**").unwrap();
        trie.insert(&p, 1);
        trie.insert(&p, 2);
        trie.insert(&q, 3);
        assert_eq!(trie.remove(&p, |v| *v == 1), Some(1));
        assert_eq!(trie.remove(&p, |v| *v == 1), None);
        assert_eq!(trie.len(), 2);
        let mut found = Vec::new();
        trie.for_each_match("a.b.c", |v| found.push(*v));
        found.sort();
        assert_eq!(found, [2, 3]);
        trie.retain(|v| *v != 2);
        assert_eq!(trie.len(), 1);
        assert!(trie.root.literal["a"].star.is_none(), "empty branch pruned");
    }
}
