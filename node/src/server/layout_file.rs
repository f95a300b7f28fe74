//! The layout on disk: `DATA_DIR/layout.json`, written atomically on every change and
//! read at start-up, so a restarted node keeps the layout the cluster committed (the
//! seed list only seeds a new cluster's first layout).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use distkv_network::{Layout, Member, MemberState, Membership, MembershipEvent};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;

use super::StartupError;

/// The file's name in the data directory.
pub const LAYOUT_FILE: &str = "layout.json";

/// Largest layout file read (a 4096-member layout is well under 1 MiB).
const MAX_FILE_BYTES: u64 = 16 << 20;

#[derive(Serialize, Deserialize)]
struct OnDisk {
    version: u64,
    virtual_nodes: u32,
    members: Vec<Member>,
    /// [`Layout::digest`] of the above: a damaged or hand-edited file is refused.
    digest: String,
}

/// The layout saved in `dir`, if any and if it names `local_id` (else it is not this
/// node's layout any more: `None`, logged), checked against this node: `local_id` must not
/// have left, and the virtual nodes must be `virtual_nodes`.
pub fn load(
    dir: &Path,
    local_id: &str,
    virtual_nodes: u32,
) -> Result<Option<Layout>, StartupError> {
    let path = dir.join(LAYOUT_FILE);
    let damaged = |why: String| {
        StartupError(format!(
            "the layout file {} is damaged: {why}; copy layout.json from another node's data \
             directory (the cluster's newest layout), or remove it to start from the seed list",
            path.display()
        ))
    };
    let size = match std::fs::metadata(&path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StartupError(format!("cannot read {}: {e}", path.display()))),
    };
    if size > MAX_FILE_BYTES {
        return Err(damaged(format!(
            "it is {size} bytes, the limit is {MAX_FILE_BYTES}"
        )));
    }
    let text = std::fs::read_to_string(&path)
        .map_err(|e| StartupError(format!("cannot read {}: {e}", path.display())))?;
    let disk: OnDisk = serde_json::from_str(&text).map_err(|e| damaged(e.to_string()))?;
    let layout = Layout::new(disk.version, disk.virtual_nodes, disk.members)
        .map_err(|e| damaged(e.to_string()))?;
    let digest = format!("{:016x}", layout.digest());
    if digest != disk.digest {
        return Err(damaged(format!(
            "its digest says {}, its content hashes to {digest}",
            disk.digest
        )));
    }
    if layout.virtual_nodes() != virtual_nodes {
        return Err(StartupError(format!(
            "invalid setting replication.virtual_nodes = {virtual_nodes}: the cluster's layout \
             (in {}) has {} virtual nodes per member, and they cannot change in a running \
             cluster; start the node with --virtual-nodes {}",
            path.display(),
            layout.virtual_nodes(),
            layout.virtual_nodes()
        )));
    }
    let Some(me) = layout.member(local_id) else {
        // Saved under another id (a node without --node-id takes its address as id, and
        // the address changed): not this node's layout any more.
        tracing::warn!(
            node_id = local_id,
            version = layout.version(),
            file = %path.display(),
            "the saved layout does not name this node (its id changed?): it is ignored, and \
             the layout is taken from the seeds as on a first start"
        );
        return Ok(None);
    };
    if me.state == MemberState::Left {
        return Err(StartupError(format!(
            "node {local_id:?} was removed from the cluster (layout version {}, in {}): it no \
             longer owns data; wipe its data directory before it joins again",
            layout.version(),
            path.display()
        )));
    }
    Ok(Some(layout))
}

/// Writes `layout` to `dir` atomically (a temporary file, fsync, rename, fsync of the
/// directory).
pub fn save(dir: &Path, layout: &Layout) -> std::io::Result<()> {
    let disk = OnDisk {
        version: layout.version(),
        virtual_nodes: layout.virtual_nodes(),
        members: layout.members().to_vec(),
        digest: format!("{:016x}", layout.digest()),
    };
    let text = serde_json::to_string_pretty(&disk).map_err(std::io::Error::other)?;
    crate::util::write_atomic(dir, LAYOUT_FILE, text.as_bytes())
}

/// Saves the layout now and after every change `membership` announces, until the
/// membership goes away. A failed save is logged (the node keeps serving: the layout is
/// pulled again from the others after a restart).
pub async fn keep_saved<M: Membership>(membership: Arc<M>, dir: PathBuf) {
    let mut events = membership.subscribe();
    let mut saved = 0;
    loop {
        let layout = membership.layout();
        if layout.version() != saved {
            let (d, l) = (dir.clone(), layout.clone());
            let result = tokio::task::spawn_blocking(move || save(&d, &l)).await;
            match result {
                Ok(Ok(())) => saved = layout.version(),
                Ok(Err(e)) => tracing::error!(
                    version = layout.version(),
                    dir = %dir.display(),
                    "cannot save the layout: {e}; check the data directory (space, permissions)"
                ),
                Err(e) => tracing::error!("the layout save task failed: {e}"),
            }
        }
        match events.recv().await {
            Ok(MembershipEvent::LayoutChanged { .. }) | Err(RecvError::Lagged(_)) => {}
            Ok(MembershipEvent::LivenessChanged { .. }) => {}
            Err(RecvError::Closed) => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(state_of_b: MemberState) -> Layout {
        let member = |id: &str, state| Member {
            id: id.into(),
            address: format!("{id}:1"),
            state,
        };
        Layout::new(
            4,
            16,
            vec![member("a", MemberState::Normal), member("b", state_of_b)],
        )
        .unwrap()
    }

    #[test]
    fn a_saved_layout_loads_back_and_damage_or_a_removal_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path(), "a", 16).unwrap().is_none());
        let l = layout(MemberState::Normal);
        save(dir.path(), &l).unwrap();
        assert_eq!(load(dir.path(), "a", 16).unwrap(), Some(l.clone()));

        let err = load(dir.path(), "a", 8).unwrap_err().0;
        assert!(err.contains("--virtual-nodes 16"), "{err}");

        let path = dir.path().join(LAYOUT_FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("\"a:1\"", "\"evil:1\"")).unwrap();
        let err = load(dir.path(), "a", 16).unwrap_err().0;
        assert!(
            err.contains("is damaged") && err.contains("digest"),
            "{err}"
        );
        std::fs::write(&path, "{not json").unwrap();
        assert!(load(dir.path(), "a", 16).unwrap_err().0.contains("damaged"));

        save(dir.path(), &layout(MemberState::Left)).unwrap();
        let err = load(dir.path(), "b", 16).unwrap_err().0;
        assert!(err.contains("was removed") && err.contains("wipe"), "{err}");
        assert!(load(dir.path(), "a", 16).unwrap().is_some());
        // Another id: the file is not this node's layout.
        assert!(load(dir.path(), "c", 16).unwrap().is_none());
    }
}
