//! The merged view, computed from plain data.
//!
//! **Writers.** Membership records (authorize / deauthorize, each with the author's frontier:
//! how much of every writer's log it had) are ordered by "has seen" (a record whose author had
//! seen another record comes after it), ties broken by (author key, seq); every peer with the same
//! records gets the same order. Replaying them in that order gives the writer set: a record
//! counts only if its author is a writer and the record lies inside the author's limit. A removal
//! limits the removed writer's log to what the remover had seen; because a removal can invalidate
//! records that were replayed before it (a concurrent record past the new limit), the replay is
//! repeated with the limits found until they stop changing. The primary cannot be removed.
//! Re-authorizing a removed writer lifts its limit.
//!
//! **Files.** Each version of a path carries a version vector: the merge of the vectors of every
//! version of that path its writer could see, with the writer's own entry set to the version's
//! seq. A version is superseded when another candidate's vector dominates it. The candidates of a
//! path are each writer's latest version inside its limit; those not superseded are concurrent.
//! The winner is picked by a fixed rule on data every peer has (a put beats a delete, then the
//! larger vector sum, then the larger writer key), and every concurrent version stays listed.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};

use cohd_format::{Entry, Key};

/// A version vector or frontier: writer -> seq (vectors) or core length (frontiers).
pub type Clock = BTreeMap<Key, u64>;

/// One version of one path by one writer.
#[derive(Debug, Clone, PartialEq)]
pub struct PathVersion {
    /// Who wrote it.
    pub writer: Key,
    /// Seq of its record in the writer's db core.
    pub seq: u64,
    /// Its version vector.
    pub clock: Clock,
    /// The file entry, or `None` for a delete (tombstone).
    pub entry: Option<Entry>,
    /// When the writer says it wrote it (ms since the Unix epoch, from its own clock): shown
    /// to people, never used to order versions. `None` for versions recorded without one.
    pub time: Option<u64>,
}

/// A writer-set change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberOp {
    /// Make a key a writer.
    Authorize(Key),
    /// Remove a writer.
    Deauthorize(Key),
}

/// A writer-set change as recorded in its author's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRecord {
    /// Seq of the record in the author's db core.
    pub seq: u64,
    /// The change.
    pub op: MemberOp,
    /// How much of each writer's log the author had when writing (lengths).
    pub frontier: Clock,
}

/// What a peer holds of one writer's log.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WriterData {
    /// Membership records, in seq order.
    pub members: Vec<MemberRecord>,
    /// Every version of every path in the log, per path in seq order.
    pub versions: BTreeMap<String, Vec<PathVersion>>,
}

/// A path's resolution.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    /// The version shown.
    pub winner: PathVersion,
    /// All concurrent versions (winner included) when there is more than one.
    pub conflicts: Vec<PathVersion>,
}

/// The merged view.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct View {
    /// Writers and their limits (`None`: the whole log counts).
    pub writers: BTreeMap<Key, Option<u64>>,
    /// Removed writers and the length of their log that still counts.
    pub removed: BTreeMap<Key, u64>,
    /// Every path with at least one candidate version, resolved (tombstone winners included).
    pub paths: BTreeMap<String, Resolved>,
}

impl View {
    /// Visible files: paths whose winner is a put.
    pub fn files(&self) -> impl Iterator<Item = (&String, &PathVersion)> {
        self.paths
            .iter()
            .filter(|(_, r)| r.winner.entry.is_some())
            .map(|(p, r)| (p, &r.winner))
    }

    /// Paths with concurrent versions.
    pub fn conflicts(&self) -> impl Iterator<Item = (&String, &Resolved)> {
        self.paths.iter().filter(|(_, r)| r.conflicts.len() > 1)
    }

    /// Visible files that are also folders of other visible files (`/a` and `/a/b`).
    pub fn clashes(&self) -> Vec<String> {
        let files: Vec<&String> = self.files().map(|(p, _)| p).collect();
        files
            .windows(2)
            .filter(|w| {
                w[1].len() > w[0].len()
                    && w[1].starts_with(w[0].as_str())
                    && w[1].as_bytes()[w[0].len()] == b'/'
            })
            .map(|w| w[0].clone())
            .collect()
    }
}

/// `a` dominates `b`: `a >= b` everywhere and `a != b`.
pub fn dominates(a: &Clock, b: &Clock) -> bool {
    a != b && b.iter().all(|(k, v)| a.get(k).copied().unwrap_or(0) >= *v)
}

/// Componentwise maximum.
pub fn merge(into: &mut Clock, other: &Clock) {
    for (k, v) in other {
        let e = into.entry(*k).or_insert(0);
        *e = (*e).max(*v);
    }
}

/// Passes of the membership replay before giving up on a fixpoint (only hostile, contradictory
/// records can keep limits changing; the result is still a pure function of the data).
const MAX_PASSES: usize = 16;

/// Computes the writer set: writer -> limit (`None` = unlimited), and removed writers' limits.
/// (`data` may hold `WriterData` or shared `Arc<WriterData>`, as every function here.)
pub fn writers<D: Borrow<WriterData>>(
    primary: Key,
    data: &BTreeMap<Key, D>,
) -> (BTreeMap<Key, Option<u64>>, BTreeMap<Key, u64>) {
    let order = membership_order(data);
    let mut limits: BTreeMap<Key, u64> = BTreeMap::new();
    let mut result = (BTreeMap::new(), BTreeMap::new());
    for _ in 0..MAX_PASSES {
        let mut active: BTreeMap<Key, Option<u64>> = BTreeMap::new();
        active.insert(primary, None);
        let mut removed: BTreeMap<Key, u64> = BTreeMap::new();
        for (author, rec) in &order {
            let counts =
                active.contains_key(author) && limits.get(author).is_none_or(|l| rec.seq < *l);
            if !counts {
                continue;
            }
            match rec.op {
                MemberOp::Authorize(k) => {
                    removed.remove(&k);
                    active.insert(k, None);
                }
                MemberOp::Deauthorize(k) if k != primary => {
                    if active.remove(&k).is_some() || removed.contains_key(&k) {
                        let seen = rec.frontier.get(&k).copied().unwrap_or(0);
                        let l = removed.get(&k).map_or(seen, |old| (*old).min(seen));
                        removed.insert(k, l);
                    }
                }
                MemberOp::Deauthorize(_) => {}
            }
        }
        let stable = removed == limits;
        limits = removed.clone();
        result = (active, removed);
        if stable {
            break;
        }
    }
    result
}

/// Membership records in "has seen" order, ties by (author, seq).
fn membership_order<D: Borrow<WriterData>>(data: &BTreeMap<Key, D>) -> Vec<(Key, MemberRecord)> {
    let mut all: Vec<(Key, MemberRecord)> = data
        .iter()
        .flat_map(|(k, d)| d.borrow().members.iter().map(move |r| (*k, r.clone())))
        .collect();
    all.sort_by_key(|a| (a.0, a.1.seq));
    // y depends on x when y's author had x in its log when writing y (own log: earlier seq).
    let seen = |y: &(Key, MemberRecord), x: &(Key, MemberRecord)| -> bool {
        if y.0 == x.0 {
            return x.1.seq < y.1.seq;
        }
        y.1.frontier.get(&x.0).is_some_and(|len| *len > x.1.seq)
    };
    let n = all.len();
    let mut done = vec![false; n];
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        // The first (by author, seq) record all of whose dependencies are placed; on a cycle
        // (only lying frontiers make one) the first unplaced record, so the order stays total.
        let pick = (0..n)
            .filter(|i| !done[*i])
            .find(|&i| (0..n).all(|j| done[j] || j == i || !seen(&all[i], &all[j])))
            .or_else(|| (0..n).find(|i| !done[*i]));
        let Some(i) = pick else { break };
        done[i] = true;
        out.push(all[i].clone());
    }
    out
}

/// How much of `key`'s log counts: all of it for a writer, up to its limit for a removed one.
fn counted(
    key: &Key,
    writers: &BTreeMap<Key, Option<u64>>,
    removed: &BTreeMap<Key, u64>,
) -> Option<u64> {
    match (writers.get(key), removed.get(key)) {
        (Some(_), _) => Some(u64::MAX),
        (None, Some(l)) => Some(*l),
        (None, None) => None,
    }
}

/// A writer's candidate for a path: its latest version inside its limit.
fn candidate(versions: &[PathVersion], limit: u64) -> Option<&PathVersion> {
    versions.iter().rev().find(|v| v.seq < limit)
}

/// Resolves one path from its candidates (at least one).
pub(super) fn resolve(cands: &[&PathVersion]) -> Resolved {
    let mut live: Vec<&PathVersion> = cands
        .iter()
        .copied()
        .filter(|v| !cands.iter().any(|o| dominates(&o.clock, &v.clock)))
        .collect();
    // Identical vectors from different writers cannot happen honestly; keep both.
    live.sort_by_key(|v| std::cmp::Reverse(rank(v)));
    let winner = live[0].clone();
    let conflicts = if live.len() > 1 {
        live.into_iter().cloned().collect()
    } else {
        Vec::new()
    };
    Resolved { winner, conflicts }
}

/// The whole merged view.
pub fn view<D: Borrow<WriterData>>(primary: Key, data: &BTreeMap<Key, D>) -> View {
    let (writers, removed) = writers(primary, data);
    let mut candidates: BTreeMap<&String, Vec<&PathVersion>> = BTreeMap::new();
    for (key, d) in data {
        let Some(limit) = counted(key, &writers, &removed) else {
            continue;
        };
        for (path, versions) in &d.borrow().versions {
            if let Some(v) = candidate(versions, limit) {
                candidates.entry(path).or_default().push(v);
            }
        }
    }
    let paths = candidates
        .into_iter()
        .map(|(path, cands)| (path.clone(), resolve(&cands)))
        .collect();
    View {
        writers,
        removed,
        paths,
    }
}

/// The view of `data`, given `old`, the view of `old_data`: equal to [`view`]`(primary, data)`,
/// but when the writer set and limits are unchanged only the paths of writers whose data
/// changed are resolved again. A writer's data counts as unchanged when both maps share it
/// (the same allocation, e.g. one `Arc`), or when it compares equal path by path.
pub fn update<D: Borrow<WriterData>>(
    primary: Key,
    old: View,
    old_data: &BTreeMap<Key, D>,
    data: &BTreeMap<Key, D>,
) -> View {
    let (writers, removed) = writers(primary, data);
    if writers != old.writers || removed != old.removed {
        return view(primary, data);
    }
    let empty = WriterData::default();
    let of = |m: &BTreeMap<Key, D>, k: &Key| -> *const WriterData {
        m.get(k)
            .map_or(&empty as *const _, |d| d.borrow() as *const _)
    };
    let mut touched: BTreeSet<&String> = BTreeSet::new();
    let keys: BTreeSet<&Key> = old_data.keys().chain(data.keys()).collect();
    for k in keys {
        if counted(k, &writers, &removed).is_none() || std::ptr::eq(of(old_data, k), of(data, k)) {
            continue;
        }
        let before = old_data.get(k).map_or(&empty, |d| d.borrow());
        let after = data.get(k).map_or(&empty, |d| d.borrow());
        for (p, vs) in &before.versions {
            if after.versions.get(p) != Some(vs) {
                touched.insert(p);
            }
        }
        for (p, vs) in &after.versions {
            if before.versions.get(p) != Some(vs) {
                touched.insert(p);
            }
        }
    }
    let mut paths = old.paths;
    for p in touched {
        let cands: Vec<&PathVersion> = data
            .iter()
            .filter_map(|(k, d)| {
                let limit = counted(k, &writers, &removed)?;
                candidate(d.borrow().versions.get(p)?, limit)
            })
            .collect();
        if cands.is_empty() {
            paths.remove(p);
        } else {
            paths.insert(p.clone(), resolve(&cands));
        }
    }
    View {
        writers,
        removed,
        paths,
    }
}

/// Winner rule among concurrent versions: put over delete, larger vector sum, larger writer key,
/// larger seq.
fn rank(v: &PathVersion) -> (bool, u64, Key, u64) {
    let sum = v.clock.values().fold(0u64, |a, b| a.saturating_add(*b));
    (v.entry.is_some(), sum, v.writer, v.seq)
}

/// The vector a new version of `path` by `writer` at `seq` gets, given the versions of that path
/// the writer can currently see (all candidates, conflicts included).
pub fn next_clock<'a>(
    writer: Key,
    seq: u64,
    seen: impl IntoIterator<Item = &'a PathVersion>,
) -> Clock {
    let mut c = Clock::new();
    for v in seen {
        merge(&mut c, &v.clock);
    }
    c.insert(writer, seq);
    c
}

/// Keys of every writer the data mentions (for loading cores).
pub fn mentioned<D: Borrow<WriterData>>(data: &BTreeMap<Key, D>) -> BTreeSet<Key> {
    let mut out: BTreeSet<Key> = data.keys().copied().collect();
    for d in data.values() {
        for r in &d.borrow().members {
            let (MemberOp::Authorize(k) | MemberOp::Deauthorize(k)) = r.op;
            out.insert(k);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use cohd_format::BlobId;

    fn k(i: u8) -> Key {
        Key([i; 32])
    }

    fn clock(pairs: &[(u8, u64)]) -> Clock {
        pairs.iter().map(|(w, s)| (k(*w), *s)).collect()
    }

    fn put(w: u8, seq: u64, c: &[(u8, u64)]) -> PathVersion {
        let blob = BlobId {
            block_length: 1,
            byte_length: seq,
            ..BlobId::default()
        };
        PathVersion {
            writer: k(w),
            seq,
            clock: clock(c),
            entry: Some(Entry::file(blob, false, None)),
            time: None,
        }
    }

    fn del(w: u8, seq: u64, c: &[(u8, u64)]) -> PathVersion {
        PathVersion {
            entry: None,
            ..put(w, seq, c)
        }
    }

    fn member(seq: u64, op: MemberOp, f: &[(u8, u64)]) -> MemberRecord {
        MemberRecord {
            seq,
            op,
            frontier: clock(f),
        }
    }

    type Item<'a> = (u8, Vec<MemberRecord>, Vec<(&'a str, PathVersion)>);

    fn data(items: Vec<Item<'_>>) -> BTreeMap<Key, WriterData> {
        let mut out = BTreeMap::new();
        for (w, members, versions) in items {
            let mut d = WriterData {
                members,
                ..WriterData::default()
            };
            for (p, v) in versions {
                d.versions.entry(p.to_string()).or_default().push(v);
            }
            out.insert(k(w), d);
        }
        out
    }

    fn with_version(
        mut d: BTreeMap<Key, WriterData>,
        w: u8,
        p: &str,
        v: PathVersion,
    ) -> BTreeMap<Key, WriterData> {
        d.entry(k(w))
            .or_default()
            .versions
            .entry(p.to_string())
            .or_default()
            .push(v);
        d
    }

    #[test]
    fn causal_overwrite_beats_wall_clock_and_concurrent_writes_conflict() {
        // 1 authorizes 2. 2 overwrites /f after seeing 1's version; /g is written concurrently.
        let d = data(vec![
            (
                1,
                vec![member(1, MemberOp::Authorize(k(2)), &[(1, 1)])],
                vec![("/f", put(1, 2, &[(1, 2)])), ("/g", put(1, 3, &[(1, 3)]))],
            ),
            (
                2,
                vec![],
                vec![
                    ("/f", put(2, 1, &[(1, 2), (2, 1)])),
                    ("/g", put(2, 2, &[(2, 2)])),
                ],
            ),
        ]);
        let v = view(k(1), &d);
        assert_eq!(v.writers.len(), 2);
        let f = &v.paths["/f"];
        assert_eq!((f.winner.writer, f.conflicts.len()), (k(2), 0));
        let g = &v.paths["/g"];
        assert_eq!(g.conflicts.len(), 2);
        assert_eq!(v.conflicts().count(), 1);
    }

    #[test]
    fn delete_hides_what_it_saw_but_not_a_concurrent_write_and_a_later_write_revives() {
        let base = |extra: Vec<(&'static str, PathVersion)>| {
            let mut w2 = vec![("/f", del(2, 1, &[(1, 2), (2, 1)]))];
            w2.extend(extra);
            data(vec![
                (
                    1,
                    vec![member(1, MemberOp::Authorize(k(2)), &[(1, 1)])],
                    vec![("/f", put(1, 2, &[(1, 2)]))],
                ),
                (2, vec![], w2),
            ])
        };
        let v = view(k(1), &base(vec![]));
        assert!(v.paths["/f"].winner.entry.is_none());
        assert_eq!(v.files().count(), 0);
        // Writer 1 writes /f again without having seen the delete: concurrent, the put survives.
        let d = with_version(base(vec![]), 1, "/f", put(1, 3, &[(1, 3)]));
        let v = view(k(1), &d);
        assert_eq!(v.paths["/f"].winner.seq, 3);
        assert_eq!(v.paths["/f"].conflicts.len(), 2);
        // A write that saw the delete revives the path with no conflict.
        let d = with_version(base(vec![]), 1, "/f", put(1, 4, &[(1, 4), (2, 1)]));
        let v = view(k(1), &d);
        assert_eq!(
            (v.paths["/f"].winner.seq, v.paths["/f"].conflicts.len()),
            (4, 0)
        );
    }

    #[test]
    fn removal_keeps_seen_writes_and_ignores_later_ones_and_primary_stays() {
        let d = data(vec![
            (
                1,
                vec![
                    member(1, MemberOp::Authorize(k(2)), &[(1, 1)]),
                    member(3, MemberOp::Deauthorize(k(2)), &[(1, 3), (2, 2)]),
                    member(4, MemberOp::Deauthorize(k(1)), &[(1, 4)]),
                ],
                vec![],
            ),
            (
                2,
                vec![member(3, MemberOp::Deauthorize(k(1)), &[(2, 3)])],
                vec![
                    ("/seen", put(2, 1, &[(2, 1)])),
                    ("/later", put(2, 2, &[(2, 2)])),
                ],
            ),
        ]);
        let v = view(k(1), &d);
        assert!(
            v.writers.contains_key(&k(1)),
            "the primary cannot be removed"
        );
        assert!(!v.writers.contains_key(&k(2)));
        assert_eq!(v.removed.get(&k(2)), Some(&2));
        assert!(v.paths.contains_key("/seen"));
        assert!(!v.paths.contains_key("/later"));
    }

    #[test]
    fn mutual_removal_is_decided_the_same_way_whatever_the_data_order() {
        // Primary 1 adds 2 and 3; 2 and 3 remove each other concurrently.
        let d = data(vec![
            (
                1,
                vec![
                    member(1, MemberOp::Authorize(k(2)), &[(1, 1)]),
                    member(2, MemberOp::Authorize(k(3)), &[(1, 2)]),
                ],
                vec![],
            ),
            (
                2,
                vec![member(
                    1,
                    MemberOp::Deauthorize(k(3)),
                    &[(1, 3), (2, 1), (3, 1)],
                )],
                vec![("/two", put(2, 2, &[(2, 2)]))],
            ),
            (
                3,
                vec![member(
                    1,
                    MemberOp::Deauthorize(k(2)),
                    &[(1, 3), (2, 1), (3, 1)],
                )],
                vec![("/three", put(3, 2, &[(3, 2)]))],
            ),
        ]);
        let v = view(k(1), &d);
        // Exactly one of them survives, decided by the (author key, seq) tie-break: 2 acts first.
        assert!(v.writers.contains_key(&k(2)) ^ v.writers.contains_key(&k(3)));
        assert!(v.writers.contains_key(&k(2)));
        assert!(v.paths.contains_key("/two") && !v.paths.contains_key("/three"));
        let reordered: BTreeMap<Key, WriterData> = d.into_iter().rev().collect();
        assert_eq!(view(k(1), &reordered), v);
    }

    #[test]
    fn non_writers_records_are_ignored_and_file_folder_clash_is_reported() {
        let d = data(vec![
            (
                1,
                vec![member(1, MemberOp::Authorize(k(2)), &[(1, 1)])],
                vec![("/a", put(1, 2, &[(1, 2)]))],
            ),
            (2, vec![], vec![("/a/b", put(2, 1, &[(2, 1)]))]),
            (
                9,
                vec![member(1, MemberOp::Deauthorize(k(2)), &[(2, 5)])],
                vec![("/evil", put(9, 2, &[(9, 2)]))],
            ),
        ]);
        let v = view(k(1), &d);
        assert!(!v.paths.contains_key("/evil"));
        assert!(v.writers.contains_key(&k(2)));
        assert_eq!(v.clashes(), vec!["/a".to_string()]);
    }
}
