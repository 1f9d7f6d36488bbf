//! The segment trie behind every router: the patterns of all subscriptions,
//! found from a topic in time that depends on the topic, not on how many
//! unrelated patterns are stored (the sublist of NATS).

use std::collections::HashMap;

use crate::topic::{segments, Pattern, Segment, INLINE_SEGMENTS};

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
    root: TrieNode<T>,
    len: usize,
}

#[derive(Debug)]
struct TrieNode<T> {
    literal: HashMap<Box<str>, TrieNode<T>>,
    star: Option<Box<TrieNode<T>>>,
    double_star: Option<Box<TrieNode<T>>>,
    // Values whose pattern ends at this node.
    values: Vec<T>,
    // How many `**` lie on the path to this node: from two on, a topic can
    // reach the node along several paths, and lookups must deduplicate.
    double_stars_above: u8,
}

impl<T> TrieNode<T> {
    fn new(double_stars_above: u8) -> Self {
        TrieNode {
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
            root: TrieNode::new(0),
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
                    .or_insert_with(|| TrieNode::new(depth)),
                Segment::Star => node
                    .star
                    .get_or_insert_with(|| Box::new(TrieNode::new(depth))),
                Segment::DoubleStar => node
                    .double_star
                    .get_or_insert_with(|| Box::new(TrieNode::new(depth.saturating_add(1)))),
            };
        }
        node.values.push(value);
        self.len += 1;
    }

    /// Removes and returns the first value under `pattern` for which `pick`
    /// is true, pruning branches left empty.
    pub fn remove(&mut self, pattern: &Pattern, pick: impl Fn(&T) -> bool) -> Option<T> {
        fn go<T>(node: &mut TrieNode<T>, rest: &[Segment], pick: &dyn Fn(&T) -> bool) -> Option<T> {
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
        let mut seen: Vec<*const TrieNode<T>> = Vec::new();
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
        fn go<T>(node: &TrieNode<T>, visit: &mut dyn FnMut(&T)) {
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
        fn go<T>(node: &mut TrieNode<T>, keep: &mut dyn FnMut(&mut T) -> bool) -> usize {
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

impl<T> TrieNode<T> {
    fn walk(&self, topic: &[&str], visit: &mut impl FnMut(&T), seen: &mut Vec<*const TrieNode<T>>) {
        let Some((segment, rest)) = topic.split_first() else {
            if self.values.is_empty() {
                return;
            }
            if self.double_stars_above >= 2 {
                let me = self as *const TrieNode<T>;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::MATCH_TABLE;

    #[test]
    fn trie_lookups_follow_the_table() {
        for &(pattern, topic, expected) in MATCH_TABLE {
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
        for (i, &(pattern, _, _)) in MATCH_TABLE.iter().enumerate() {
            trie.insert(&Pattern::parse(pattern).unwrap(), i);
        }
        for &(_, topic, _) in MATCH_TABLE {
            let mut found = Vec::new();
            trie.for_each_match(topic, |i| found.push(*i));
            found.sort_unstable();
            let expected: Vec<usize> = MATCH_TABLE
                .iter()
                .enumerate()
                .filter(|(_, (p, _, _))| Pattern::parse(p).unwrap().matches(topic))
                .map(|(i, _)| i)
                .collect();
            assert_eq!(found, expected, "topic {topic}");
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
