//! Relationship walks: whether a user holds a role on an instance,
//! directly or derived through relationship tuples (§4), and every role a
//! user holds so (for `/user-permissions`).

use std::collections::{BTreeMap, BTreeSet};

use hashbrown::HashSet;
use smallvec::SmallVec;

use crate::snapshot::{BitSet, Snapshot};

/// The user's tenant roles in tenant `t`.
pub(super) fn tenant_roles(snap: &Snapshot, u: u32, t: u32) -> impl Iterator<Item = u32> + '_ {
    let row = snap.user_roles.row(u);
    let start = row.partition_point(|&(tn, _)| tn < t);
    row[start..]
        .iter()
        .take_while(move |&&(tn, _)| tn == t)
        .map(|&(_, r)| r)
}

/// The user's direct resource roles on instance `inst` (sorted).
pub(super) fn direct_roles(snap: &Snapshot, u: u32, inst: u32) -> &[(u32, u32)] {
    let row = snap.user_inst_roles.row(u);
    let start = row.partition_point(|&(i, _)| i < inst);
    let end = start + row[start..].partition_point(|&(i, _)| i == inst);
    &row[start..end]
}

/// Tuples `(relation, subject)` pointing at `obj` with relation `rel`.
pub(super) fn tuples_into(snap: &Snapshot, obj: u32, rel: u32) -> &[(u32, u32)] {
    let row = snap.tuples_in.row(obj);
    let start = row.partition_point(|&(r, _)| r < rel);
    let end = start + row[start..].partition_point(|&(r, _)| r == rel);
    &row[start..end]
}

/// The (instance, role) nodes a walk has expanded. Walks for one check are
/// short (a few levels, a few parents), where a linear scan of a small
/// inline vector beats hashing and allocates nothing; a long walk moves to
/// a hash set.
#[derive(Default)]
struct Visited {
    few: SmallVec<[(u32, u32); Visited::FEW]>,
    many: Option<HashSet<(u32, u32)>>,
}

impl Visited {
    const FEW: usize = 32;

    /// Adds `node`; false if it was already there.
    fn insert(&mut self, node: (u32, u32)) -> bool {
        if let Some(many) = &mut self.many {
            return many.insert(node);
        }
        if self.few.contains(&node) {
            return false;
        }
        if self.few.len() < Self::FEW {
            self.few.push(node);
        } else {
            let mut many: HashSet<(u32, u32)> = self.few.drain(..).collect();
            many.insert(node);
            self.many = Some(many);
        }
        true
    }
}

/// The work list of a walk: on the stack unless the walk grows wide.
pub(super) type WalkStack = SmallVec<[(u32, u32, u32); 16]>;

/// Pushes the (instance, type, role) nodes that derive role `r` on `i`
/// (type `t`): the subjects of tuples into `i` that a derivation rule names.
/// Rules with `no_direct_roles_on_object` are skipped when `has_direct`.
pub(super) fn push_derivation_sources(
    snap: &Snapshot,
    stack: &mut impl Extend<(u32, u32, u32)>,
    i: u32,
    t: u32,
    r: u32,
    has_direct: bool,
) {
    for d in &snap.type_info[t as usize].derive[r as usize] {
        if d.no_direct && has_direct {
            continue;
        }
        stack.extend(
            tuples_into(snap, i, d.relation)
                .iter()
                .filter(|&&(_, subj)| snap.instances.scope(subj) == d.from_type)
                .map(|&(_, subj)| (subj, d.from_type, d.from_role)),
        );
    }
}

/// Whether user `u` holds any role of `goal` on `inst` of type `ty`,
/// directly or derived (§4). A depth-first search over (instance, role)
/// nodes; each node is expanded once, so cycles in tuples terminate.
pub(super) fn has_role(snap: &Snapshot, u: u32, inst: u32, ty: u32, goal: &BitSet) -> bool {
    let mut stack: WalkStack = goal.iter().map(|r| (inst, ty, r)).collect();
    if stack.is_empty() {
        return false;
    }
    let mut seen = Visited::default();
    while let Some((i, t, r)) = stack.pop() {
        if !seen.insert((i, r)) {
            continue;
        }
        let direct = direct_roles(snap, u, i);
        if direct.iter().any(|&(_, dr)| dr == r) {
            return true;
        }
        push_derivation_sources(snap, &mut stack, i, t, r, !direct.is_empty());
    }
    false
}

/// Every (instance, role) the user holds, direct or derived, found by
/// walking down from the direct assignments (§4, §6 user permissions).
pub(super) fn all_instance_roles(snap: &Snapshot, u: u32) -> BTreeMap<u32, BTreeSet<u32>> {
    let mut seen: HashSet<(u32, u32)> = HashSet::new();
    let mut queue: Vec<(u32, u32)> = snap.user_inst_roles.row(u).to_vec();
    let mut out: BTreeMap<u32, BTreeSet<u32>> = BTreeMap::new();
    while let Some((i, r)) = queue.pop() {
        if !seen.insert((i, r)) {
            continue;
        }
        out.entry(i).or_default().insert(r);
        let t = snap.instances.scope(i);
        for f in &snap.type_info[t as usize].forward[r as usize] {
            for &(rel, obj) in snap.tuples_out.row(i) {
                if rel != f.relation || snap.instances.scope(obj) != f.to_type {
                    continue;
                }
                if f.no_direct && !direct_roles(snap, u, obj).is_empty() {
                    continue;
                }
                queue.push((obj, f.to_role));
            }
        }
    }
    out
}

#[cfg(test)]
mod visited_tests {
    use super::Visited;

    #[test]
    fn visited_sets_stay_exact_past_the_small_size() {
        let mut v = Visited::default();
        for i in 0..100u32 {
            assert!(v.insert((i, i % 3)), "{i} is new");
        }
        for i in 0..100u32 {
            assert!(!v.insert((i, i % 3)), "{i} was seen");
        }
        assert!(v.insert((1000, 0)));
    }
}
