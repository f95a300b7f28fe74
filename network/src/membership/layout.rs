//! The layout: who owns tokens, explicit and versioned, changed only by a join, a
//! decommission or a removal. Liveness never rewrites it.

use std::fmt;

use crate::NodeInfo;

/// A member's place in the layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Being added: receives writes for the ranges it will own, not yet read from.
    Joining,
    /// Owns its tokens.
    Normal,
    /// Being decommissioned: still owns its tokens while they are streamed away.
    Leaving,
    /// Gone for good; kept so that every node learns it left.
    Left,
}

impl MemberState {
    /// Stable code of the state in [`Layout::digest`]'s encoding.
    fn code(self) -> u8 {
        match self {
            MemberState::Joining => 0,
            MemberState::Normal => 1,
            MemberState::Leaving => 2,
            MemberState::Left => 3,
        }
    }
}

impl fmt::Display for MemberState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MemberState::Joining => "joining",
            MemberState::Normal => "normal",
            MemberState::Leaving => "leaving",
            MemberState::Left => "left",
        })
    }
}

/// One member of a layout.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Member {
    /// The node's id (unique in a layout).
    pub id: String,
    /// `host:port` where peers reach it.
    pub address: String,
    /// Its place in the layout.
    pub state: MemberState,
}

/// The members of the cluster at one layout version. Members are sorted by id and ids are
/// unique, so two nodes holding the same layout hold identical values (and digests).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    version: u64,
    virtual_nodes: u32,
    members: Vec<Member>,
}

/// How an offered layout relates to the current one ([`Layout::check_successor`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Succession {
    /// Same version, same digest: nothing to do.
    Same,
    /// Version current + 1 with the same virtual nodes: apply it.
    Next,
}

/// Why a layout cannot be built or accepted.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum LayoutError {
    /// Two members share an id.
    #[error("node id {id:?} appears twice in the layout: node ids must be unique")]
    DuplicateId {
        /// The id.
        id: String,
    },
    /// Two different layouts carry one version: refused, and worth an operator's look.
    #[error(
        "two different layouts carry version {version} (digest ours {ours:016x}, theirs \
         {theirs:016x}): refused; find which authority committed the second one and \
         re-apply the intended layout as the next version"
    )]
    Conflict {
        /// The version both carry.
        version: u64,
        /// Digest of ours.
        ours: u64,
        /// Digest of the offered one.
        theirs: u64,
    },
    /// The offered layout is older than ours.
    #[error("layout version {offered} is older than the current version {current}: ignored")]
    Stale {
        /// Our version.
        current: u64,
        /// The offered version.
        offered: u64,
    },
    /// The offered layout is more than one version ahead.
    #[error(
        "layout version {offered} is more than one ahead of the current version {current}: \
         pull the versions in between first"
    )]
    Gap {
        /// Our version.
        current: u64,
        /// The offered version.
        offered: u64,
    },
    /// A successor changed the number of virtual nodes, which would move every token.
    #[error(
        "the offered layout has {theirs} virtual nodes per member, the current one {ours}: a \
         layout change may not change virtual nodes (rebuild the cluster to change them)"
    )]
    VirtualNodes {
        /// Ours.
        ours: u32,
        /// The offered layout's.
        theirs: u32,
    },
}

impl Layout {
    /// A layout of `members` (sorted by id here). The same id twice, whatever the
    /// addresses, is [`LayoutError::DuplicateId`].
    pub fn new(
        version: u64,
        virtual_nodes: u32,
        mut members: Vec<Member>,
    ) -> Result<Layout, LayoutError> {
        members.sort_by(|a, b| a.id.cmp(&b.id));
        if let Some(pair) = members.windows(2).find(|p| p[0].id == p[1].id) {
            return Err(LayoutError::DuplicateId {
                id: pair[0].id.clone(),
            });
        }
        Ok(Layout {
            version,
            virtual_nodes,
            members,
        })
    }

    /// The version: increases by one with every change.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Virtual nodes (ring tokens) per member.
    pub fn virtual_nodes(&self) -> u32 {
        self.virtual_nodes
    }

    /// Every member, sorted by id.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The member with this id.
    pub fn member(&self, id: &str) -> Option<&Member> {
        self.members
            .binary_search_by(|m| m.id.as_str().cmp(id))
            .ok()
            .map(|i| &self.members[i])
    }

    /// Members in any of `states`, as NodeInfo, sorted by id.
    pub fn nodes_in(&self, states: &[MemberState]) -> Vec<NodeInfo> {
        self.members
            .iter()
            .filter(|m| states.contains(&m.state))
            .map(|m| NodeInfo {
                id: m.id.clone(),
                address: m.address.clone(),
            })
            .collect()
    }

    /// XXH3-64 of a canonical encoding of version, virtual_nodes and every member (id,
    /// address, state): equal layouts have equal digests on every platform.
    ///
    /// Encoding: version (u64 BE), virtual_nodes (u32 BE), member count (u64 BE), then per
    /// member in id order: id length (u64 BE), id, address length (u64 BE), address, state
    /// (one byte: joining 0, normal 1, leaving 2, left 3).
    pub fn digest(&self) -> u64 {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(&self.version.to_be_bytes());
        h.update(&self.virtual_nodes.to_be_bytes());
        h.update(&(self.members.len() as u64).to_be_bytes());
        for m in &self.members {
            h.update(&(m.id.len() as u64).to_be_bytes());
            h.update(m.id.as_bytes());
            h.update(&(m.address.len() as u64).to_be_bytes());
            h.update(m.address.as_bytes());
            h.update(&[m.state.code()]);
        }
        h.digest()
    }

    /// The next version with `members` (version + 1, same virtual_nodes).
    pub fn next(&self, members: Vec<Member>) -> Result<Layout, LayoutError> {
        Layout::new(self.version.saturating_add(1), self.virtual_nodes, members)
    }

    /// Sans-IO acceptance rule for an offered layout against this (current) one: the same
    /// layout is [`Succession::Same`]; version + 1 with the same virtual nodes is
    /// [`Succession::Next`]; the same version with another digest is
    /// [`LayoutError::Conflict`]; an older one [`LayoutError::Stale`]; one more than a
    /// version ahead [`LayoutError::Gap`]; a successor with other virtual nodes
    /// [`LayoutError::VirtualNodes`].
    pub fn check_successor(&self, offered: &Layout) -> Result<Succession, LayoutError> {
        let (current, version) = (self.version, offered.version);
        if version == current {
            let (ours, theirs) = (self.digest(), offered.digest());
            return if ours == theirs {
                Ok(Succession::Same)
            } else {
                Err(LayoutError::Conflict {
                    version,
                    ours,
                    theirs,
                })
            };
        }
        if version < current {
            return Err(LayoutError::Stale {
                current,
                offered: version,
            });
        }
        if version - current > 1 {
            return Err(LayoutError::Gap {
                current,
                offered: version,
            });
        }
        if offered.virtual_nodes != self.virtual_nodes {
            return Err(LayoutError::VirtualNodes {
                ours: self.virtual_nodes,
                theirs: offered.virtual_nodes,
            });
        }
        Ok(Succession::Next)
    }
}

/// The layout after removing member `id` from `current` (its state becomes
/// [`MemberState::Left`], so every node learns it left): refused, with the reason, unless
/// `id` is a normal member that is dead (`dead`), no other change is in flight (no
/// member joining or leaving), and a normal member remains.
pub fn plan_removal(current: &Layout, id: &str, dead: bool) -> Result<Layout, String> {
    let Some(member) = current.member(id) else {
        return Err(format!(
            "node {id:?} is not a member of layout version {}; `distkv-client status` lists the members",
            current.version()
        ));
    };
    match member.state {
        MemberState::Left => {
            return Err(format!(
                "node {id:?} already left (layout version {})",
                current.version()
            ))
        }
        MemberState::Joining | MemberState::Leaving => {
            return Err(format!(
                "node {id:?} is {}: wait for its change to finish, then retry",
                member.state
            ))
        }
        MemberState::Normal => {}
    }
    if let Some(busy) = change_in_flight(current) {
        return Err(format!("{busy}; retry when it is done"));
    }
    if !dead {
        return Err(format!(
            "node {id:?} is alive: removing it would leave it serving keys it no longer owns; \
             stop it first (remove-node is for dead nodes)"
        ));
    }
    let remaining = current
        .members()
        .iter()
        .filter(|m| m.id != id && m.state == MemberState::Normal)
        .count();
    if remaining == 0 {
        return Err(format!(
            "node {id:?} is the last member: a cluster cannot remove it"
        ));
    }
    with_state(current, id, MemberState::Left)
}

/// The layout with node `id` at `address` joining `current` (state
/// [`MemberState::Joining`]: it receives writes for the ranges it will own, not reads).
/// Asking again while it is joining gives `current` back (the join is in flight);
/// refused while another change is in flight, for a member already in, for an id that
/// left (removed nodes come back with a new id), or for an address another member uses.
pub fn plan_join(current: &Layout, id: &str, address: &str) -> Result<Layout, String> {
    if let Some(m) = current.member(id) {
        return match m.state {
            MemberState::Joining if m.address == address => Ok(current.clone()),
            MemberState::Left => Err(format!(
                "node id {id:?} left the cluster (layout version {}): join with a new --node-id \
                 and an empty data directory",
                current.version()
            )),
            state => Err(format!(
                "node {id:?} is already a member ({state} at {}): a node joins once",
                m.address
            )),
        };
    }
    if let Some(busy) = change_in_flight(current) {
        return Err(format!(
            "{busy}; the join is \
             retried"
        ));
    }
    if let Some(other) = current
        .members()
        .iter()
        .find(|m| m.address == address && m.state != MemberState::Left)
    {
        return Err(format!(
            "address {address} is member {:?}'s: each node needs its own peer address",
            other.id
        ));
    }
    let mut members = current.members().to_vec();
    members.push(Member {
        id: id.to_string(),
        address: address.to_string(),
        state: MemberState::Joining,
    });
    current.next(members).map_err(|e| e.to_string())
}

/// The layout with joining node `id` made [`MemberState::Normal`] (it streamed its
/// ranges): reads move to it. Asking again once it is normal gives `current` back.
pub fn plan_join_done(current: &Layout, id: &str) -> Result<Layout, String> {
    match current.member(id).map(|m| m.state) {
        Some(MemberState::Joining) => {}
        Some(MemberState::Normal) => return Ok(current.clone()),
        Some(state) => return Err(format!("node {id:?} is {state}, not joining")),
        None => {
            return Err(format!(
                "node {id:?} is not in layout version {}: it must join first",
                current.version()
            ))
        }
    }
    with_state(current, id, MemberState::Normal)
}

/// The layout with live member `id` leaving `current` (state [`MemberState::Leaving`]:
/// it still owns its ranges while they are streamed to their new owners). Asking again
/// while it is leaving gives `current` back; refused while another change is in flight,
/// for a member that is not normal, and for the last normal member.
pub fn plan_leave(current: &Layout, id: &str) -> Result<Layout, String> {
    match current.member(id).map(|m| m.state) {
        Some(MemberState::Leaving) => return Ok(current.clone()),
        Some(MemberState::Normal) => {}
        Some(state) => {
            return Err(format!(
                "node {id:?} is {state}: only a normal member leaves"
            ))
        }
        None => {
            return Err(format!(
                "node {id:?} is not a member of layout version {}",
                current.version()
            ))
        }
    }
    if let Some(busy) = change_in_flight(current) {
        return Err(format!("{busy}; retry when it is done"));
    }
    if !current
        .members()
        .iter()
        .any(|m| m.id != id && m.state == MemberState::Normal)
    {
        return Err(format!("node {id:?} is the last member: it cannot leave"));
    }
    with_state(current, id, MemberState::Leaving)
}

/// The layout with leaving member `id` gone (state [`MemberState::Left`]): its ranges
/// were streamed away. Asking again once it left gives `current` back.
pub fn plan_leave_done(current: &Layout, id: &str) -> Result<Layout, String> {
    match current.member(id).map(|m| m.state) {
        Some(MemberState::Leaving) => with_state(current, id, MemberState::Left),
        Some(MemberState::Left) => Ok(current.clone()),
        Some(state) => Err(format!("node {id:?} is {state}, not leaving")),
        None => Err(format!("node {id:?} is not a member")),
    }
}

/// A change of the layout, asked of the layout authority ([`layout_authority`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LayoutChange {
    /// Node `id` at `address` joins ([`plan_join`]).
    Join {
        /// The joining node.
        id: String,
        /// Its peer address.
        address: String,
    },
    /// Joining node `id` streamed its ranges ([`plan_join_done`]).
    JoinDone {
        /// The joining node.
        id: String,
    },
    /// Live node `id` starts leaving ([`plan_leave`]).
    Leave {
        /// The leaving node.
        id: String,
    },
    /// Leaving node `id` streamed its ranges away ([`plan_leave_done`]).
    LeaveDone {
        /// The leaving node.
        id: String,
    },
    /// Dead node `id` is taken out ([`plan_removal`]).
    Remove {
        /// The removed node.
        id: String,
    },
}

impl LayoutChange {
    /// The node the change is about.
    pub fn node(&self) -> &str {
        match self {
            LayoutChange::Join { id, .. }
            | LayoutChange::JoinDone { id }
            | LayoutChange::Leave { id }
            | LayoutChange::LeaveDone { id }
            | LayoutChange::Remove { id } => id,
        }
    }

    /// Whether only the node it is about may ask for it (its own join or leave); a
    /// removal is asked for a dead node by an operator, through any member.
    pub fn asked_by_its_node(&self) -> bool {
        !matches!(self, LayoutChange::Remove { .. })
    }
}

impl fmt::Display for LayoutChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayoutChange::Join { id, address } => write!(f, "join of {id:?} at {address}"),
            LayoutChange::JoinDone { id } => write!(f, "end of {id:?}'s join"),
            LayoutChange::Leave { id } => write!(f, "decommission of {id:?}"),
            LayoutChange::LeaveDone { id } => write!(f, "end of {id:?}'s decommission"),
            LayoutChange::Remove { id } => write!(f, "removal of {id:?}"),
        }
    }
}

/// The layout after `change` (the `plan_*` function of its kind); `dead` tells whether
/// a member is dead in the planning node's view (a removal needs its node dead).
pub fn plan_change(
    current: &Layout,
    change: &LayoutChange,
    dead: &dyn Fn(&str) -> bool,
) -> Result<Layout, String> {
    match change {
        LayoutChange::Join { id, address } => plan_join(current, id, address),
        LayoutChange::JoinDone { id } => plan_join_done(current, id),
        LayoutChange::Leave { id } => plan_leave(current, id),
        LayoutChange::LeaveDone { id } => plan_leave_done(current, id),
        LayoutChange::Remove { id } => plan_removal(current, id, dead(id)),
    }
}

/// The start of the refusal a node that is not the layout authority answers (a node
/// asking a change goes on to the next candidate when it reads it).
pub const NOT_AUTHORITY: &str = "not the layout authority";

/// The layout authority in one node's view: the lowest-id normal member that node does
/// not hold dead. It alone commits layout changes, one at a time, so two changes asked
/// through different nodes meet at one place: the second is planned against the first
/// and refused while it is in flight. (Two nodes disagree on the authority only while
/// their liveness views disagree on the lower ids; the layouts they would commit then
/// carry one version and are refused everywhere as a conflict, never merged.)
pub fn layout_authority<'a>(
    current: &'a Layout,
    dead: &dyn Fn(&str) -> bool,
) -> Option<&'a Member> {
    current
        .members()
        .iter()
        .find(|m| m.state == MemberState::Normal && !dead(&m.id))
}

/// "another layout change is in flight (ID is STATE): one change at a time" when a member
/// is joining or leaving.
fn change_in_flight(current: &Layout) -> Option<String> {
    current
        .members()
        .iter()
        .find(|m| matches!(m.state, MemberState::Joining | MemberState::Leaving))
        .map(|busy| {
            format!(
                "another layout change is in flight ({} is {}): one change at a time",
                busy.id, busy.state
            )
        })
}

fn with_state(current: &Layout, id: &str, state: MemberState) -> Result<Layout, String> {
    let members = current
        .members()
        .iter()
        .map(|m| Member {
            state: if m.id == id { state } else { m.state },
            ..m.clone()
        })
        .collect();
    current.next(members).map_err(|e| e.to_string())
}

/// The layout in force and the rule that replaces it ([`Layout::check_successor`]),
/// shared by every membership implementation.
#[derive(Debug)]
pub(crate) struct LayoutCell {
    current: parking_lot::RwLock<std::sync::Arc<Layout>>,
}

impl LayoutCell {
    pub(crate) fn new(layout: Layout) -> Self {
        LayoutCell {
            current: parking_lot::RwLock::new(std::sync::Arc::new(layout)),
        }
    }

    pub(crate) fn get(&self) -> std::sync::Arc<Layout> {
        self.current.read().clone()
    }

    /// Installs `newer`, a layout pulled from a member that holds it: any later version
    /// (the versions in between were committed and superseded, so only the newest
    /// matters) with the same virtual nodes. Otherwise as [`LayoutCell::apply`].
    pub(crate) fn adopt(&self, newer: Layout) -> Result<Option<Vec<String>>, LayoutError> {
        let mut current = self.current.write();
        if newer.version() <= current.version().saturating_add(1) {
            drop(current);
            return self.apply(newer);
        }
        if newer.virtual_nodes() != current.virtual_nodes() {
            return Err(LayoutError::VirtualNodes {
                ours: current.virtual_nodes(),
                theirs: newer.virtual_nodes(),
            });
        }
        let gone = current
            .members()
            .iter()
            .filter(|m| newer.member(&m.id).is_none())
            .map(|m| m.id.clone())
            .collect();
        let (from, version) = (current.version(), newer.version());
        *current = std::sync::Arc::new(newer);
        tracing::info!(from, version, "layout changed (pulled from a member)");
        Ok(Some(gone))
    }

    /// Installs `offered` if it is the next version: `Ok(Some(ids))` with the ids of the
    /// members it no longer holds, `Ok(None)` when it is the layout in force already. A
    /// conflict (another layout with our version) is logged naming both digests.
    pub(crate) fn apply(&self, offered: Layout) -> Result<Option<Vec<String>>, LayoutError> {
        let mut current = self.current.write();
        match current.check_successor(&offered) {
            Ok(Succession::Same) => Ok(None),
            Ok(Succession::Next) => {
                let gone = current
                    .members()
                    .iter()
                    .filter(|m| offered.member(&m.id).is_none())
                    .map(|m| m.id.clone())
                    .collect();
                let version = offered.version();
                *current = std::sync::Arc::new(offered);
                tracing::info!(version, "layout changed");
                Ok(Some(gone))
            }
            Err(
                e @ LayoutError::Conflict {
                    version,
                    ours,
                    theirs,
                },
            ) => {
                tracing::error!(
                    version,
                    ours = format_args!("{ours:016x}"),
                    theirs = format_args!("{theirs:016x}"),
                    "two different layouts carry one version: the offered one is refused"
                );
                Err(e)
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, state: MemberState) -> Member {
        Member {
            id: id.into(),
            address: format!("{id}:1"),
            state,
        }
    }

    fn layout(version: u64, members: Vec<Member>) -> Layout {
        Layout::new(version, 8, members).unwrap()
    }

    #[test]
    fn the_authority_is_the_lowest_id_normal_member_not_held_dead() {
        let l = layout(
            5,
            vec![
                member("a", MemberState::Joining),
                member("b", MemberState::Leaving),
                member("c", MemberState::Normal),
                member("d", MemberState::Normal),
                member("e", MemberState::Left),
            ],
        );
        let none_dead = |_: &str| false;
        assert_eq!(
            layout_authority(&l, &none_dead).map(|m| m.id.as_str()),
            Some("c")
        );
        let c_dead = |id: &str| id == "c";
        assert_eq!(
            layout_authority(&l, &c_dead).map(|m| m.id.as_str()),
            Some("d")
        );
        let all_dead = |_: &str| true;
        assert!(layout_authority(&l, &all_dead).is_none());
        // plan_change follows the plan of each kind: a removal needs its node dead, and
        // nothing else starts while a change is in flight (a joins, b leaves here).
        let stable = layout(
            1,
            vec![
                member("c", MemberState::Normal),
                member("d", MemberState::Normal),
            ],
        );
        let removal = LayoutChange::Remove { id: "d".into() };
        assert!(plan_change(&stable, &removal, &none_dead)
            .unwrap_err()
            .contains("alive"));
        let next = plan_change(&stable, &removal, &|id: &str| id == "d").unwrap();
        assert_eq!(next.member("d").map(|m| m.state), Some(MemberState::Left));
        let join = LayoutChange::Join {
            id: "f".into(),
            address: "f:1".into(),
        };
        assert!(plan_change(&l, &join, &none_dead)
            .unwrap_err()
            .contains("another layout change is in flight"));
        assert_eq!(join.node(), "f");
        assert!(join.asked_by_its_node() && !removal.asked_by_its_node());
    }

    fn base() -> Layout {
        layout(
            3,
            vec![
                member("b", MemberState::Normal),
                member("a", MemberState::Joining),
            ],
        )
    }

    #[test]
    fn members_are_sorted_and_ids_unique() {
        let l = base();
        let ids: Vec<&str> = l.members().iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(l.member("b").map(|m| m.state), Some(MemberState::Normal));
        assert_eq!(l.member("c"), None);
        assert_eq!(l.nodes_in(&[MemberState::Normal])[0].id, "b");
        assert_eq!(
            l.nodes_in(&[MemberState::Normal, MemberState::Joining])
                .len(),
            2
        );
        let mut other = member("a", MemberState::Normal);
        other.address = "elsewhere:2".into();
        let err = Layout::new(1, 8, vec![member("a", MemberState::Normal), other]).unwrap_err();
        assert_eq!(err, LayoutError::DuplicateId { id: "a".into() });
        assert_eq!(MemberState::Leaving.to_string(), "leaving");
    }

    #[test]
    fn digest_is_equal_for_equal_layouts_and_differs_in_every_field() {
        let l = base();
        // Member order in the input does not matter.
        let same = layout(
            3,
            vec![
                member("a", MemberState::Joining),
                member("b", MemberState::Normal),
            ],
        );
        assert_eq!(l.digest(), same.digest());
        // Pinned, so a change of the encoding (which would split a mixed-version cluster)
        // fails here first.
        let mut enc = Vec::new();
        enc.extend_from_slice(&3u64.to_be_bytes());
        enc.extend_from_slice(&8u32.to_be_bytes());
        enc.extend_from_slice(&2u64.to_be_bytes());
        for (id, state) in [("a", 0u8), ("b", 1)] {
            enc.extend_from_slice(&1u64.to_be_bytes());
            enc.extend_from_slice(id.as_bytes());
            enc.extend_from_slice(&3u64.to_be_bytes());
            enc.extend_from_slice(format!("{id}:1").as_bytes());
            enc.push(state);
        }
        assert_eq!(l.digest(), xxhash_rust::xxh3::xxh3_64(&enc));

        let mut variants = vec![
            Layout::new(4, 8, l.members().to_vec()).unwrap(),
            Layout::new(3, 9, l.members().to_vec()).unwrap(),
            layout(3, vec![member("a", MemberState::Joining)]),
        ];
        let mut m = l.members().to_vec();
        m[0].address = "a:2".into();
        variants.push(layout(3, m));
        let mut m = l.members().to_vec();
        m[0].state = MemberState::Normal;
        variants.push(layout(3, m));
        let mut m = l.members().to_vec();
        m[0].id = "c".into();
        variants.push(layout(3, m));
        for v in variants {
            assert_ne!(l.digest(), v.digest(), "{v:?}");
        }
    }

    #[test]
    fn removal_takes_only_a_dead_normal_member_one_change_at_a_time() {
        let l = layout(
            3,
            vec![
                member("a", MemberState::Normal),
                member("b", MemberState::Normal),
                member("c", MemberState::Normal),
            ],
        );
        let next = plan_removal(&l, "c", true).unwrap();
        assert_eq!(next.version(), 4);
        assert_eq!(next.member("c").unwrap().state, MemberState::Left);
        assert_eq!(next.member("a").unwrap().state, MemberState::Normal);
        assert!(plan_removal(&l, "c", false)
            .unwrap_err()
            .contains("is alive"));
        assert!(plan_removal(&l, "z", true)
            .unwrap_err()
            .contains("not a member"));
        assert!(plan_removal(&next, "c", true)
            .unwrap_err()
            .contains("already left"));
        let busy = layout(
            3,
            vec![
                member("a", MemberState::Normal),
                member("b", MemberState::Joining),
                member("c", MemberState::Normal),
            ],
        );
        assert!(plan_removal(&busy, "c", true)
            .unwrap_err()
            .contains("in flight"));
        assert!(plan_removal(&busy, "b", true)
            .unwrap_err()
            .contains("is joining"));
        let alone = layout(1, vec![member("a", MemberState::Normal)]);
        assert!(plan_removal(&alone, "a", true)
            .unwrap_err()
            .contains("last member"));
    }

    #[test]
    fn a_join_is_one_change_at_a_time_and_finishes_once() {
        let l = layout(
            2,
            vec![
                member("a", MemberState::Normal),
                member("b", MemberState::Normal),
            ],
        );
        let joining = plan_join(&l, "c", "c:1").unwrap();
        assert_eq!(joining.version(), 3);
        assert_eq!(joining.member("c").unwrap().state, MemberState::Joining);
        // Asked again (a retry): the same layout, no new version.
        assert_eq!(plan_join(&joining, "c", "c:1").unwrap(), joining);
        assert!(plan_join(&joining, "d", "d:1")
            .unwrap_err()
            .contains("in flight"));
        assert!(plan_join(&l, "a", "a:1")
            .unwrap_err()
            .contains("already a member"));
        assert!(plan_join(&l, "z", "a:1")
            .unwrap_err()
            .contains("own peer address"));
        let done = plan_join_done(&joining, "c").unwrap();
        assert_eq!(done.version(), 4);
        assert_eq!(done.member("c").unwrap().state, MemberState::Normal);
        assert_eq!(plan_join_done(&done, "c").unwrap(), done);
        assert!(plan_join_done(&l, "c")
            .unwrap_err()
            .contains("must join first"));
        let removed = plan_removal(&done, "c", true).unwrap();
        assert!(plan_join(&removed, "c", "c:1")
            .unwrap_err()
            .contains("new --node-id"));
    }

    #[test]
    fn a_live_member_leaves_in_two_steps_one_change_at_a_time() {
        let l = layout(
            2,
            vec![
                member("a", MemberState::Normal),
                member("b", MemberState::Normal),
            ],
        );
        let leaving = plan_leave(&l, "b").unwrap();
        assert_eq!(leaving.member("b").unwrap().state, MemberState::Leaving);
        assert_eq!(plan_leave(&leaving, "b").unwrap(), leaving);
        assert!(plan_leave(&leaving, "a").unwrap_err().contains("in flight"));
        let left = plan_leave_done(&leaving, "b").unwrap();
        assert_eq!(left.version(), 4);
        assert_eq!(left.member("b").unwrap().state, MemberState::Left);
        assert_eq!(plan_leave_done(&left, "b").unwrap(), left);
        assert!(plan_leave(&left, "a").unwrap_err().contains("last member"));
        assert!(plan_leave_done(&l, "a")
            .unwrap_err()
            .contains("not leaving"));
    }

    #[test]
    fn a_pulled_layout_may_skip_versions_but_not_change_virtual_nodes() {
        let l = layout(3, vec![member("a", MemberState::Normal)]);
        let cell = LayoutCell::new(l.clone());
        let far = Layout::new(7, 8, vec![member("b", MemberState::Normal)]).unwrap();
        assert_eq!(cell.adopt(far.clone()), Ok(Some(vec!["a".to_string()])));
        assert_eq!(*cell.get(), far);
        assert_eq!(cell.adopt(far.clone()), Ok(None));
        let other_vnodes = Layout::new(9, 16, vec![]).unwrap();
        assert!(matches!(
            cell.adopt(other_vnodes),
            Err(LayoutError::VirtualNodes { .. })
        ));
        let stale = Layout::new(5, 8, vec![]).unwrap();
        assert!(matches!(cell.adopt(stale), Err(LayoutError::Stale { .. })));
        assert_eq!(cell.get().version(), 7);
    }

    #[test]
    fn check_successor_accepts_same_and_next_only() {
        let l = base();
        assert_eq!(l.check_successor(&l.clone()), Ok(Succession::Same));
        let next = l.next(vec![member("a", MemberState::Normal)]).unwrap();
        assert_eq!(next.version(), 4);
        assert_eq!(next.virtual_nodes(), 8);
        assert_eq!(l.check_successor(&next), Ok(Succession::Next));
        assert_eq!(
            next.check_successor(&l),
            Err(LayoutError::Stale {
                current: 4,
                offered: 3
            })
        );
        let far = Layout::new(5, 8, vec![]).unwrap();
        assert_eq!(
            l.check_successor(&far),
            Err(LayoutError::Gap {
                current: 3,
                offered: 5
            })
        );
        let other = layout(3, vec![member("z", MemberState::Normal)]);
        let err = l.check_successor(&other).unwrap_err();
        assert_eq!(
            err,
            LayoutError::Conflict {
                version: 3,
                ours: l.digest(),
                theirs: other.digest()
            }
        );
        assert!(
            err.to_string()
                .contains(&format!("{:016x}", other.digest())),
            "{err}"
        );
        let vnodes = Layout::new(4, 16, l.members().to_vec()).unwrap();
        assert_eq!(
            l.check_successor(&vnodes),
            Err(LayoutError::VirtualNodes {
                ours: 8,
                theirs: 16
            })
        );
    }
}
