//! A NATS JetStream cluster on loopback for tests: `nats-server`
//! processes (Debian's package) with JetStream on, routed to each other,
//! each with its own store under the test's directory, and the users and
//! permissions of `deploy/nats-users.conf` (worker, producer, operator,
//! each with a password made for the cluster): the tests run the workers
//! and the `cluster` commands as a deployment does.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `nats-server` from PATH, else where Debian puts it.
fn server_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("nats-server"))
            .find(|candidate| candidate.is_file())
    });
    on_path
        .or_else(|| {
            let debian = PathBuf::from("/usr/sbin/nats-server");
            debian.is_file().then_some(debian)
        })
        .expect("nats-server is not installed (apt-get install nats-server)")
}

/// A free port below the kernel's ephemeral range (32768 and up): a port
/// the kernel hands out would also be handed to the servers' outgoing
/// route connections while they start, and the one server that should
/// listen on it could not (seen: "address already in use", a cluster of
/// two that never elects its leaders).
fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    loop {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        let port = 20_000 + (hasher.finish() % 12_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub struct NatsCluster {
    nodes: Vec<Option<Child>>,
    pub client_ports: Vec<u16>,
    route_ports: Vec<u16>,
    dir: PathBuf,
    /// (user, password) of the worker, the producer and the operator.
    users: [(&'static str, String); 3],
}

/// The roles of `deploy/nats-users.conf`.
#[derive(Clone, Copy, Debug)]
pub enum Role {
    Worker = 0,
    Producer = 1,
    Operator = 2,
}

fn password() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    format!("pw-{:016x}", hasher.finish())
}

impl NatsCluster {
    /// `size` servers in one cluster (1: a single server, no routes).
    pub fn start(dir: &Path, size: usize) -> Self {
        let client_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let route_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let mut cluster = Self {
            nodes: Vec::new(),
            client_ports,
            route_ports,
            dir: dir.to_owned(),
            users: [
                ("worker", password()),
                ("producer", password()),
                ("operator", password()),
            ],
        };
        let users = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nats-users.conf");
        std::fs::copy(users, dir.join("nats-users.conf")).unwrap();
        for node in 0..size {
            let child = cluster.spawn(node);
            cluster.nodes.push(Some(child));
        }
        cluster
    }

    fn spawn(&self, node: usize) -> Child {
        let store = self.dir.join(format!("nats-{node}"));
        std::fs::create_dir_all(&store).unwrap();
        let mut config = format!(
            "server_name: n{node}\nlisten: 127.0.0.1:{}\njetstream {{ store_dir: \"{}\" }}\ninclude nats-users.conf\n",
            self.client_ports[node],
            store.display()
        );
        if self.route_ports.len() > 1 {
            let routes: Vec<String> = self
                .route_ports
                .iter()
                .map(|port| format!("\"nats://127.0.0.1:{port}\""))
                .collect();
            config += &format!(
                "cluster {{ name: test\n listen: 127.0.0.1:{}\n routes: [{}] }}\n",
                self.route_ports[node],
                routes.join(", ")
            );
        }
        let config_path = self.dir.join(format!("nats-{node}.conf"));
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(self.dir.join(format!("nats-{node}.log"))).unwrap();
        Command::new(server_binary())
            .arg("-c")
            .arg(&config_path)
            .envs([
                ("OUTREACH_NATS_WORKER_PASSWORD", self.users[0].1.as_str()),
                ("OUTREACH_NATS_PRODUCER_PASSWORD", self.users[1].1.as_str()),
                ("OUTREACH_NATS_OPERATOR_PASSWORD", self.users[2].1.as_str()),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("cannot start nats-server")
    }

    /// The environment a process connecting as `role` gets.
    pub fn env(&self, role: Role) -> [(&'static str, String); 2] {
        let (user, password) = &self.users[role as usize];
        [
            (outreach_host::cluster::NATS_USER_ENV, (*user).to_owned()),
            (outreach_host::cluster::NATS_PASSWORD_ENV, password.clone()),
        ]
    }

    /// Connects as `role`.
    pub async fn connect(&self, role: Role) -> Result<async_nats::Client, String> {
        let (user, password) = &self.users[role as usize];
        let urls = outreach_host::cluster::server_urls(&self.url());
        async_nats::ConnectOptions::with_user_and_password((*user).to_owned(), password.clone())
            .connect(urls.as_slice())
            .await
            .map_err(|e| e.to_string())
    }

    /// Every server's URL, for clients that fail over between them.
    pub fn url(&self) -> String {
        self.client_ports
            .iter()
            .map(|port| format!("nats://127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Waits until JetStream answers (a meta leader was elected).
    pub async fn wait_ready(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let ready = async {
                let client = self.connect(Role::Worker).await?;
                let js = async_nats::jetstream::new(client);
                // A replicated stream can be made: a meta leader is elected
                // and enough servers are up.
                let config = async_nats::jetstream::stream::Config {
                    name: "READY_PROBE".into(),
                    subjects: vec!["ready.probe".into()],
                    num_replicas: self.client_ports.len(),
                    ..Default::default()
                };
                js.get_or_create_stream(config)
                    .await
                    .map_err(|e| e.to_string())?;
                js.delete_stream("READY_PROBE")
                    .await
                    .map_err(|e| e.to_string())
            };
            let why = match tokio::time::timeout(Duration::from_secs(2), ready).await {
                Ok(Ok(_)) => return,
                Ok(Err(e)) => e,
                Err(_) => "no answer within 2 s".into(),
            };
            assert!(
                Instant::now() < deadline,
                "the NATS cluster was not ready within {limit:?}: {why}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The running servers' process ids.
    pub fn pids(&self) -> Vec<u32> {
        self.nodes.iter().flatten().map(Child::id).collect()
    }

    /// SIGKILLs server `node`.
    pub fn kill(&mut self, node: usize) {
        if let Some(mut child) = self.nodes[node].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for node in 0..self.nodes.len() {
            self.kill(node);
        }
    }
}
