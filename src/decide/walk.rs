//! Relationship walks: whether a user holds a role on an instance,
//! directly or derived through relationship tuples (§4), and every role a
//! user holds so (for `/user-permissions`).

use std::collections::{BTreeMap, BTreeSet};

use hashbrown::HashSet;
use smallvec::SmallVec;

use crate::snapshot::{InstanceId, ResourceRoleId, Snapshot, TypeId, UserId};

/// The (instance, role) nodes a walk has expanded. Walks for one check are
/// short (a few levels, a few parents), where a linear scan of a small
/// inline vector beats hashing and allocates nothing; a long walk moves to
/// a hash set.
#[derive(Default)]
struct Visited {
    few: SmallVec<[Node; Visited::FEW]>,
    many: Option<HashSet<Node>>,
}

/// A role on an instance.
type Node = (InstanceId, ResourceRoleId);

impl Visited {
    const FEW: usize = 32;

    /// Adds `node`; false if it was already there.
    fn insert(&mut self, node: Node) -> bool {
        if let Some(many) = &mut self.many {
            return many.insert(node);
        }
        if self.few.contains(&node) {
            return false;
        }
        if self.few.len() < Self::FEW {
            self.few.push(node);
        } else {
            let mut many: HashSet<Node> = self.few.drain(..).collect();
            many.insert(node);
            self.many = Some(many);
        }
        true
    }
}

/// The work list of a walk: on the stack unless the walk grows wide.
pub(super) type WalkStack = SmallVec<[(InstanceId, TypeId, ResourceRoleId); 16]>;

/// Pushes the (instance, type, role) nodes that derive role `r` on `i`
/// (type `t`): the subjects of tuples into `i` that a derivation rule names.
/// Rules with `no_direct_roles_on_object` are skipped when `has_direct`.
pub(super) fn push_derivation_sources(
    snap: &Snapshot,
    stack: &mut impl Extend<(InstanceId, TypeId, ResourceRoleId)>,
    i: InstanceId,
    t: TypeId,
    r: ResourceRoleId,
    has_direct: bool,
) {
    for d in snap.derivations(t, r) {
        if d.no_direct && has_direct {
            continue;
        }
        stack.extend(
            snap.subjects_of(i, d.relation)
                .filter(|&subj| snap.instance_type(subj) == d.from_type)
                .map(|subj| (subj, d.from_type, d.from_role)),
        );
    }
}

/// Whether user `u` holds any role of `goal` on `inst` of type `ty`,
/// directly or derived (§4). A depth-first search over (instance, role)
/// nodes; each node is expanded once, so cycles in tuples terminate.
pub(super) fn has_role(
    snap: &Snapshot,
    u: UserId,
    inst: InstanceId,
    ty: TypeId,
    goal: impl Iterator<Item = ResourceRoleId>,
) -> bool {
    let mut stack: WalkStack = goal.map(|r| (inst, ty, r)).collect();
    if stack.is_empty() {
        return false;
    }
    let mut seen = Visited::default();
    let mine = snap.direct_roles_of(u);
    while let Some((i, t, r)) = stack.pop() {
        if !seen.insert((i, r)) {
            continue;
        }
        let mut direct = mine.on(i);
        let has_direct = direct.len() > 0;
        if direct.any(|dr| dr == r) {
            return true;
        }
        push_derivation_sources(snap, &mut stack, i, t, r, has_direct);
    }
    false
}

/// Every (instance, role) the user holds, direct or derived, found by
/// walking down from the direct assignments (§4, §6 user permissions).
pub(super) fn all_instance_roles(
    snap: &Snapshot,
    u: UserId,
) -> BTreeMap<InstanceId, BTreeSet<ResourceRoleId>> {
    let mut seen: HashSet<Node> = HashSet::new();
    let mut queue: Vec<Node> = snap.user_instance_roles(u).collect();
    let mut out: BTreeMap<InstanceId, BTreeSet<ResourceRoleId>> = BTreeMap::new();
    while let Some((i, r)) = queue.pop() {
        if !seen.insert((i, r)) {
            continue;
        }
        out.entry(i).or_default().insert(r);
        let t = snap.instance_type(i);
        for f in snap.forwardings(t, r) {
            for (rel, obj) in snap.objects_of(i) {
                if rel != f.relation || snap.instance_type(obj) != f.to_type {
                    continue;
                }
                if f.no_direct && snap.direct_roles(u, obj).len() > 0 {
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
    use crate::snapshot::{InstanceId, ResourceRoleId};

    #[test]
    fn visited_sets_stay_exact_past_the_small_size() {
        let mut v = Visited::default();
        let node = |i: u32| (InstanceId(i), ResourceRoleId(i % 3));
        for i in 0..100u32 {
            assert!(v.insert(node(i)), "{i} is new");
        }
        for i in 0..100u32 {
            assert!(!v.insert(node(i)), "{i} was seen");
        }
        assert!(v.insert(node(1000)));
    }
}
