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
pub fn writers(
    primary: Key,
    data: &BTreeMap<Key, WriterData>,
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
fn membership_order(data: &BTreeMap<Key, WriterData>) -> Vec<(Key, MemberRecord)> {
    let mut all: Vec<(Key, MemberRecord)> = data
        .iter()
        .flat_map(|(k, d)| d.members.iter().map(move |r| (*k, r.clone())))
        .collect();
    all.sort_by(|a, b| (a.0, a.1.seq).cmp(&(b.0, b.1.seq)));
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

/// The whole merged view.
pub fn view(primary: Key, data: &BTreeMap<Key, WriterData>) -> View {
    let (writers, removed) = writers(primary, data);
    let mut candidates: BTreeMap<&String, Vec<&PathVersion>> = BTreeMap::new();
    for (key, d) in data {
        let limit = match (writers.get(key), removed.get(key)) {
            (Some(_), _) => u64::MAX,
            (None, Some(l)) => *l,
            (None, None) => continue,
        };
        for (path, versions) in &d.versions {
            if let Some(v) = versions.iter().rev().find(|v| v.seq < limit) {
                candidates.entry(path).or_default().push(v);
            }
        }
    }
    let mut paths = BTreeMap::new();
    for (path, cands) in candidates {
        let mut live: Vec<&PathVersion> = cands
            .iter()
            .copied()
            .filter(|v| !cands.iter().any(|o| dominates(&o.clock, &v.clock)))
            .collect();
        // Identical vectors from different writers cannot happen honestly; keep both.
        live.sort_by(|a, b| rank(b).cmp(&rank(a)));
        let winner = live[0].clone();
        let conflicts = if live.len() > 1 {
            live.into_iter().cloned().collect()
        } else {
            Vec::new()
        };
        paths.insert(path.clone(), Resolved { winner, conflicts });
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
pub fn mentioned(data: &BTreeMap<Key, WriterData>) -> BTreeSet<Key> {
    let mut out: BTreeSet<Key> = data.keys().copied().collect();
    for d in data.values() {
        for r in &d.members {
            let (MemberOp::Authorize(k) | MemberOp::Deauthorize(k)) = r.op;
            out.insert(k);
        }
    }
    out
}
