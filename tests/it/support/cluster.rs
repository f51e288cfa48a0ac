//! [`Cluster`]: private RabbitMQ nodes of the test's own joined into one cluster (one Erlang
//! cookie, the `rabbitmq` user's), so quorum queues are replicated on all of them and a node can
//! be stopped mid-test. Each node is a [`PrivateBroker`]: its own name, ports and folders, never
//! the shared broker.

use serde_json::Value;

use super::PrivateBroker;

pub struct Cluster {
    pub nodes: Vec<PrivateBroker>,
}

impl Cluster {
    /// Boots `n` nodes side by side and joins the others to the first.
    pub async fn start(n: usize) -> Cluster {
        let nodes = futures_util::future::join_all((0..n).map(|_| PrivateBroker::start())).await;
        let cluster = Cluster { nodes };
        let first = cluster.nodes[0].node().to_string();
        for node in &cluster.nodes[1..] {
            for args in [
                vec!["stop_app"],
                vec!["join_cluster", first.as_str()],
                vec!["start_app"],
            ] {
                let out = node.ctl(&args).await;
                assert!(
                    out.status.success(),
                    "rabbitmqctl {args:?} on {}: {}{}",
                    node.node(),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        let status = cluster.nodes[0]
            .ctl(&["cluster_status", "--formatter", "json"])
            .await;
        let status: Value = serde_json::from_slice(&status.stdout).expect("cluster_status JSON");
        assert_eq!(
            status["running_nodes"].as_array().map(Vec::len),
            Some(n),
            "every node runs in the cluster: {status}"
        );
        cluster
    }

    /// `AMQP_URL` for a replica: every node, starting with node `first`.
    pub fn amqp_urls(&self, first: usize) -> String {
        (0..self.nodes.len())
            .map(|i| self.nodes[(first + i) % self.nodes.len()].amqp_url())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A running node to ask things, other than `except`.
    fn any_running(&self, except: Option<usize>) -> &PrivateBroker {
        self.nodes
            .iter()
            .enumerate()
            .find(|(i, n)| Some(*i) != except && n.is_running())
            .map(|(_, n)| n)
            .expect("a running node")
    }

    /// Index of the node that leads quorum queue `queue`, and its members.
    pub async fn leader_of(&self, queue: &str) -> (usize, Vec<String>) {
        let out = self
            .any_running(None)
            .ctl(&[
                "list_queues",
                "name",
                "leader",
                "members",
                "--formatter",
                "json",
            ])
            .await;
        let queues: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "list_queues JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
        let entry = queues
            .as_array()
            .and_then(|qs| qs.iter().find(|q| q["name"] == queue))
            .unwrap_or_else(|| panic!("{queue} is not on the cluster: {queues}"));
        let leader = entry["leader"].as_str().expect("a leader");
        let members = entry["members"]
            .as_array()
            .expect("members")
            .iter()
            .map(|m| m.as_str().unwrap_or_default().to_string())
            .collect();
        let at = self
            .nodes
            .iter()
            .position(|n| n.node() == leader)
            .unwrap_or_else(|| panic!("leader {leader} is none of the cluster's nodes"));
        (at, members)
    }
}
