//! A three-node openraft cluster in one process, each node on its own Keel log and Keel
//! database, joined by an in-process network.
//!
//! It writes through the leader, kills a follower (its Raft task and its stores are dropped,
//! as in a crash of that node), writes more while the follower is down (the leader
//! snapshots and purges its log meanwhile), restarts the follower from its directories,
//! where it recovers from its Keel log and database, waits until it has caught up, and shows
//! that the replicated state is identical on every node.
//!
//! ```text
//! cargo run --release -p keel-raft --example cluster [-- <directory>]
//! ```
//!
//! Without a directory it works in a temporary one. `RUST_LOG=info` shows openraft's and
//! Keel's logs.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_raft::{KeelLogStore, KeelStateMachine, KvRequest, TypeConfig};
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Config, Raft, SnapshotPolicy};

type NodeId = u64;
type KvRaft = Raft<TypeConfig>;
type Failure = Box<dyn std::error::Error + Send + Sync>;

/// The in-process network: every running node's Raft handle. A node missing from it is
/// unreachable (down).
#[derive(Clone, Default)]
struct Router {
    nodes: Arc<Mutex<BTreeMap<NodeId, KvRaft>>>,
}

impl Router {
    #[expect(
        clippy::result_large_err,
        reason = "openraft's network trait returns its RPCError by value"
    )]
    fn get<E: std::error::Error>(
        &self,
        target: NodeId,
    ) -> Result<KvRaft, RPCError<NodeId, BasicNode, E>> {
        let nodes = self.nodes.lock().expect("router lock");
        nodes.get(&target).cloned().ok_or_else(|| {
            let down = std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                format!("node {target} is down"),
            );
            RPCError::Unreachable(Unreachable::new(&down))
        })
    }
}

struct Connection {
    target: NodeId,
    router: Router,
}

fn remote<E: std::error::Error + 'static>(
    error: E,
) -> RPCError<NodeId, BasicNode, RaftError<NodeId, E>>
where
    RaftError<NodeId, E>: std::error::Error,
{
    RPCError::Network(NetworkError::new(&RaftError::<NodeId, E>::APIError(error)))
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let raft = self.router.get(self.target)?;
        raft.append_entries(rpc)
            .await
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let raft = self.router.get(self.target)?;
        raft.install_snapshot(rpc).await.map_err(|e| match e {
            RaftError::APIError(e) => remote(e),
            RaftError::Fatal(e) => RPCError::Network(NetworkError::new(&e)),
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let raft = self.router.get(self.target)?;
        raft.vote(rpc)
            .await
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))
    }
}

impl RaftNetworkFactory<TypeConfig> for Router {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> Connection {
        Connection {
            target,
            router: self.clone(),
        }
    }
}

/// One running node: its Raft handle and its state machine (for reading the state).
struct Node {
    raft: KvRaft,
    state: KeelStateMachine,
}

fn config() -> Arc<Config> {
    let config = Config {
        cluster_name: "keel-example".into(),
        heartbeat_interval: 100,
        election_timeout_min: 400,
        election_timeout_max: 800,
        // Snapshot (a Keel checkpoint) every 500 applied entries, keep 100 entries behind it:
        // a follower down for longer than that catches up by snapshot.
        snapshot_policy: SnapshotPolicy::LogsSinceLast(500),
        max_in_snapshot_log_to_keep: 100,
        purge_batch_size: 1,
        ..Config::default()
    };
    Arc::new(config.validate().expect("a valid Raft configuration"))
}

/// Opens node `id` from its directories (creating them the first time) and joins it to the
/// network.
async fn start(id: NodeId, base: &Path, router: &Router) -> Result<Node, Failure> {
    let dir = base.join(format!("node-{id}"));
    let log = KeelLogStore::<TypeConfig>::open(
        dir.join("raft-log"),
        keel_wal::WalOptions {
            segment_bytes: 4 << 20,
            max_record_bytes: 1 << 20,
            ..keel_wal::WalOptions::default()
        },
    )?;
    let summary = log.summary();
    let state = KeelStateMachine::open(
        dir.join("state"),
        keel::Options {
            segment_bytes: 4 << 20,
            max_record_bytes: 1 << 20,
            ..keel::Options::default()
        },
    )
    .await?;
    let keys = state.data().await?.len();
    if summary.last_log_id.is_some() || summary.vote.is_some() {
        println!(
            "  node {id}: recovered its Keel log: vote term {}, committed index {}, last log index \
             {}, purged through {}, {} entries; its Keel database holds {keys} keys",
            summary.vote.map_or(0, |v| v.leader_id.term),
            show(summary.committed.map(|c| c.index)),
            show(summary.last_log_id.map(|l| l.index)),
            show(summary.last_purged_log_id.map(|l| l.index)),
            summary.entries,
        );
    }
    // A purge past what the state machine applied (after a snapshot install) waits for it.
    let log = log.with_purge_guard(state.applied_index(), Duration::from_secs(60));
    let raft = Raft::new(id, config(), router.clone(), log, state.clone()).await?;
    router
        .nodes
        .lock()
        .expect("router lock")
        .insert(id, raft.clone());
    Ok(Node { raft, state })
}

fn show(index: Option<u64>) -> String {
    index.map_or_else(|| "-".into(), |i| i.to_string())
}

/// Writes `count` keys through the leader from 8 concurrent clients.
async fn write(leader: &KvRaft, from: usize, count: usize) -> Result<(), Failure> {
    let clients = 8;
    let mut tasks = Vec::new();
    for client in 0..clients {
        let raft = leader.clone();
        tasks.push(tokio::spawn(async move {
            for i in (from + client..from + count).step_by(clients) {
                let request = KvRequest::Set {
                    key: format!("key-{i:05}"),
                    value: format!("value-{i}"),
                };
                raft.client_write(request).await?;
            }
            Ok::<(), Failure>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

async fn leader_of(nodes: &BTreeMap<NodeId, Node>) -> Result<NodeId, Failure> {
    let (_, any) = nodes.iter().next().ok_or("no node")?;
    let metrics = any
        .raft
        .wait(Some(Duration::from_secs(10)))
        .metrics(|m| m.current_leader.is_some(), "a leader")
        .await?;
    Ok(metrics.current_leader.expect("waited for a leader"))
}

/// Waits until every node applied at least the leader's last applied index.
async fn converge(nodes: &BTreeMap<NodeId, Node>, leader: NodeId) -> Result<u64, Failure> {
    let target = nodes[&leader]
        .raft
        .metrics()
        .borrow()
        .last_applied
        .map_or(0, |l| l.index);
    for (id, node) in nodes {
        node.raft
            .wait(Some(Duration::from_secs(20)))
            .applied_index_at_least(Some(target), &format!("node {id} to catch up"))
            .await?;
    }
    Ok(target)
}

fn digest(pairs: &[(String, String)]) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    pairs.hash(&mut hasher);
    hasher.finish()
}

async fn run(base: &Path) -> Result<(), Failure> {
    let router = Router::default();
    let mut nodes = BTreeMap::new();
    for id in 1..=3 {
        nodes.insert(id, start(id, base, &router).await?);
    }
    let members: BTreeMap<NodeId, BasicNode> =
        (1..=3).map(|id| (id, BasicNode::default())).collect();
    nodes[&1].raft.initialize(members).await?;
    let leader = leader_of(&nodes).await?;
    println!(
        "1. three nodes started in {}; node {leader} is the leader",
        base.display()
    );

    let started = Instant::now();
    write(&nodes[&leader].raft, 0, 1000).await?;
    println!(
        "2. wrote 1000 keys through node {leader} from 8 clients in {:.2} s",
        started.elapsed().as_secs_f64()
    );

    let victim = *nodes.keys().find(|&&id| id != leader).expect("a follower");
    converge(&nodes, leader).await?;
    let node = nodes.remove(&victim).expect("the follower runs");
    router.nodes.lock().expect("router lock").remove(&victim);
    let applied = node
        .raft
        .metrics()
        .borrow()
        .last_applied
        .map_or(0, |l| l.index);
    node.raft.shutdown().await?;
    drop(node);
    println!(
        "3. killed follower node {victim} (it had applied index {applied}); its stores are closed"
    );

    write(&nodes[&leader].raft, 1000, 1500).await?;
    let metrics = nodes[&leader].raft.metrics().borrow().clone();
    println!(
        "4. wrote 1500 more keys with node {victim} down; the leader's snapshot is at index {}, \
         its log purged through {}",
        show(metrics.snapshot.map(|s| s.index)),
        show(metrics.purged.map(|p| p.index)),
    );

    println!("5. restarting node {victim} from its directories:");
    nodes.insert(victim, start(victim, base, &router).await?);
    let caught_up = Instant::now();
    let target = converge(&nodes, leader).await?;
    let victim_metrics = nodes[&victim].raft.metrics().borrow().clone();
    println!(
        "6. node {victim} caught up to index {target} in {:.2} s (its snapshot: index {})",
        caught_up.elapsed().as_secs_f64(),
        show(victim_metrics.snapshot.map(|s| s.index)),
    );

    let mut digests = BTreeMap::new();
    for (id, node) in &nodes {
        let pairs = node.state.data().await?;
        println!(
            "   node {id}: applied index {}, {} keys, digest {:016x}",
            show(node.raft.metrics().borrow().last_applied.map(|l| l.index)),
            pairs.len(),
            digest(&pairs)
        );
        digests.insert(digest(&pairs), pairs.len());
    }
    for (_, node) in nodes {
        node.raft.shutdown().await?;
    }
    match digests.len() {
        1 if digests.values().all(|&n| n == 2500) => {
            println!("7. the replicated state is identical on all 3 nodes (2500 keys)");
            Ok(())
        }
        _ => Err(format!("the nodes' states differ: {digests:?}").into()),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Failure> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,openraft=off")),
        )
        .with_writer(std::io::stderr)
        .init();
    let (base, _temporary): (PathBuf, Option<tempfile::TempDir>) = match std::env::args().nth(1) {
        Some(dir) => (PathBuf::from(dir), None),
        None => {
            let dir = tempfile::tempdir()?;
            (dir.path().to_path_buf(), Some(dir))
        }
    };
    run(&base).await
}
