//! Property test of the merged view: writers act on partial knowledge of each other (random
//! writes, deletes, authorizations, removals and syncs); peers then receive the logs in random
//! orders and partitions. Every peer must end with the identical view, and no authorized write
//! may vanish without a version that saw it.

use std::collections::BTreeMap;
use std::sync::Arc;

use co_hyperdrive::format::{BlobId, Entry, Key};
use co_hyperdrive::view::{self, dominates, next_clock};
use co_hyperdrive::view::{MemberOp, MemberRecord, PathVersion, View, WriterData};

use proptest::prelude::*;

const WRITERS: usize = 4;
const PATHS: [&str; 4] = ["/a", "/b", "/a/x", "/c"];

#[derive(Debug, Clone)]
enum Act {
    Write { w: usize, path: usize, delete: bool },
    Auth { w: usize, target: usize },
    Deauth { w: usize, target: usize },
    Sync { to: usize, from: usize },
}

fn act() -> impl Strategy<Value = Act> {
    let w = 0..WRITERS;
    prop_oneof![
        6 => (w.clone(), 0..PATHS.len(), prop::bool::weighted(0.25)).prop_map(|(w, path, delete)| Act::Write { w, path, delete }),
        2 => (w.clone(), 0..WRITERS).prop_map(|(w, target)| Act::Auth { w, target }),
        1 => (w.clone(), 0..WRITERS).prop_map(|(w, target)| Act::Deauth { w, target }),
        5 => (w.clone(), w).prop_map(|(to, from)| Act::Sync { to, from }),
    ]
}

fn key(i: usize) -> Key {
    Key([i as u8 + 1; 32])
}

#[derive(Debug, Clone)]
enum Rec {
    Member(MemberRecord),
    Version(String, PathVersion),
}

/// The simulated world: each writer's full log and how much of every log each writer has.
struct World {
    logs: Vec<Vec<Rec>>,
    known: Vec<Vec<u64>>,
    /// Per path: the last version written, if its writer had every log in full when writing.
    informed_last: BTreeMap<String, Option<PathVersion>>,
}

impl World {
    fn new() -> Self {
        Self {
            logs: vec![Vec::new(); WRITERS],
            known: vec![vec![1; WRITERS]; WRITERS],
            informed_last: BTreeMap::new(),
        }
    }

    /// Length of log `i` (seq 0 is the bee header, so a log of n records has length n + 1).
    fn len(&self, i: usize) -> u64 {
        self.logs[i].len() as u64 + 1
    }

    fn data(&self, lens: &[u64]) -> BTreeMap<Key, WriterData> {
        let mut out = BTreeMap::new();
        for (i, log) in self.logs.iter().enumerate() {
            let mut d = WriterData::default();
            for r in log.iter().take(lens[i].saturating_sub(1) as usize) {
                match r {
                    Rec::Member(m) => d.members.push(m.clone()),
                    Rec::Version(p, v) => d.versions.entry(p.clone()).or_default().push(v.clone()),
                }
            }
            out.insert(key(i), d);
        }
        out
    }

    fn local_view(&self, w: usize) -> View {
        let mut lens = self.known[w].clone();
        lens[w] = self.len(w);
        view::view(key(0), &self.data(&lens))
    }

    fn frontier(&self, w: usize) -> BTreeMap<Key, u64> {
        (0..WRITERS)
            .map(|i| {
                (
                    key(i),
                    if i == w {
                        self.len(w)
                    } else {
                        self.known[w][i]
                    },
                )
            })
            .collect()
    }

    fn apply(&mut self, a: &Act) {
        match *a {
            Act::Write { w, path, delete } => {
                let v = self.local_view(w);
                if !v.writers.contains_key(&key(w)) {
                    return; // not a writer in its own eyes: the library refuses the write
                }
                let p = PATHS[path].to_string();
                let seen: Vec<PathVersion> = v
                    .paths
                    .get(&p)
                    .map(|r| {
                        if r.conflicts.is_empty() {
                            vec![r.winner.clone()]
                        } else {
                            r.conflicts.clone()
                        }
                    })
                    .unwrap_or_default();
                let seq = self.len(w);
                let clock = next_clock(key(w), seq, seen.iter());
                let entry = (!delete).then(|| {
                    Entry::file(
                        BlobId {
                            byte_length: seq,
                            block_length: 1,
                            ..BlobId::default()
                        },
                        false,
                        None,
                    )
                });
                let informed = (0..WRITERS).all(|i| i == w || self.known[w][i] == self.len(i));
                let v = PathVersion {
                    writer: key(w),
                    seq,
                    clock,
                    entry,
                    time: None,
                };
                self.informed_last
                    .insert(p.clone(), informed.then(|| v.clone()));
                self.logs[w].push(Rec::Version(p, v));
            }
            Act::Auth { w, target } | Act::Deauth { w, target } => {
                if !self.local_view(w).writers.contains_key(&key(w)) {
                    return;
                }
                let op = if matches!(a, Act::Auth { .. }) {
                    MemberOp::Authorize(key(target))
                } else {
                    MemberOp::Deauthorize(key(target))
                };
                let seq = self.len(w);
                let frontier = self.frontier(w);
                self.logs[w].push(Rec::Member(MemberRecord { seq, op, frontier }));
            }
            Act::Sync { to, from } => {
                for i in 0..WRITERS {
                    let theirs = if i == from {
                        self.len(from)
                    } else {
                        self.known[from][i]
                    };
                    self.known[to][i] = self.known[to][i].max(theirs);
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn peers_converge_and_nothing_is_lost(acts in proptest::collection::vec(act(), 1..60),
                                          deliveries in proptest::collection::vec(proptest::collection::vec((0..WRITERS, 1u64..4), 0..40), 3)) {
        let mut world = World::new();
        for a in &acts {
            world.apply(a);
        }
        let full: Vec<u64> = (0..WRITERS).map(|i| world.len(i)).collect();
        let reference = view::view(key(0), &world.data(&full));

        // Peers receive prefixes in random steps (each step extends one writer's prefix), then
        // everything; the final views must all equal the reference.
        // Along the way, the incremental view (only the writer that grew re-resolved, its
        // unchanged neighbours shared as in `CoDrive`) equals the view computed from scratch.
        for steps in &deliveries {
            let mut lens = vec![1u64; WRITERS];
            let shared = |lens: &[u64], prev: Option<&BTreeMap<Key, Arc<WriterData>>>, prev_lens: &[u64]| {
                world
                    .data(lens)
                    .into_iter()
                    .enumerate()
                    .map(|(i, (k, d))| {
                        let same = prev.filter(|_| prev_lens[i] == lens[i]).and_then(|p| p.get(&k).cloned());
                        (k, same.unwrap_or_else(|| Arc::new(d)))
                    })
                    .collect::<BTreeMap<Key, Arc<WriterData>>>()
            };
            let mut data = shared(&lens, None, &lens);
            let mut inc = view::view(key(0), &data);
            for (i, n) in steps {
                let before = lens.clone();
                lens[*i] = (lens[*i] + n).min(full[*i]);
                let next = shared(&lens, Some(&data), &before);
                inc = view::update(key(0), inc, &data, &next);
                data = next;
                prop_assert_eq!(&inc, &view::view(key(0), &data));
            }
            let fin = view::view(key(0), &world.data(&full));
            prop_assert_eq!(&fin, &reference);
            // Owned data (nothing shared): compared path by path.
            let last = world.data(&lens);
            prop_assert_eq!(view::update(key(0), view::view(key(0), &last), &last, &world.data(&full)), reference.clone());
        }

        // Nothing silently lost: each counted writer's latest version of a path is shown, or a
        // shown version's vector dominates it.
        let data = world.data(&full);
        for (k, d) in &data {
            let limit = match (reference.writers.get(k), reference.removed.get(k)) {
                (Some(_), _) => u64::MAX,
                (None, Some(l)) => *l,
                (None, None) => continue,
            };
            for (path, versions) in &d.versions {
                if let Some(v) = versions.iter().rev().find(|v| v.seq < limit) {
                    let r = reference.paths.get(path).expect("a counted version's path is resolved");
                    let shown: Vec<&PathVersion> = if r.conflicts.is_empty() { vec![&r.winner] } else { r.conflicts.iter().collect() };
                    prop_assert!(shown.iter().any(|s| *s == v || dominates(&s.clock, &v.clock)),
                        "version {:?} of {} lost", v, path);
                }
            }
        }
        // Causality beats everything else: a version written with every log in hand, and not
        // followed by any other write of that path, wins without conflict (if its writer counts).
        for (path, last) in &world.informed_last {
            if let Some(v) = last {
                if reference.writers.contains_key(&v.writer) {
                    let r = &reference.paths[path];
                    prop_assert_eq!(&r.winner, v);
                    prop_assert!(r.conflicts.is_empty());
                }
            }
        }
        // The primary is always a writer.
        prop_assert!(reference.writers.contains_key(&key(0)));
    }
}
