//! containerd's CRI plugin, driven as kubelet drives it (issue 16).
//!
//! [`CriNode`] starts a containerd 1.6 of its own inside the test's host netns and a private
//! mount namespace ([`MountNs`]: tmpfs over `/run`, `/var/lib`, `/opt`), with the CRI plugin
//! pointed at a bin dir holding only our release binaries (the CRI also runs `loopback` for
//! `lo`, and `bandwidth` for the bandwidth capability: ours) and a conflist dir of the test's. Its pause image is built here, offline:
//! an OCI archive whose one layer is `/bin/busybox` (busybox-static), imported with
//! `ctr -n k8s.io images import`. The test talks to it over the CRI's gRPC socket with the
//! `k8s-cri` (v1) client, one call at a time on a current-thread tokio runtime.
//!
//! Facts this rests on (containerd 1.6.20, Debian 12): root in this environment cannot set
//! oom_score_adj -998, so `restrict_oom_score_adj = true`; AppArmor is off (`disable_apparmor`);
//! cgroupfs; snapshotter overlayfs. Pods live in netns the CRI makes under its private
//! `/run/netns`, so the test enters them through `/proc/<pause pid>/ns/net`
//! ([`CriNode::pod_netns`]). containerd and everything it started are stopped by PID: pods are
//! stopped and removed through the CRI first (their shims exit), then containerd gets SIGTERM.

// Fixture code run only by tests: a fixture that cannot be set up is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::{
    image_service_client::ImageServiceClient, runtime_service_client::RuntimeServiceClient,
    ImageSpec, ImageStatusRequest, LinuxPodSandboxConfig, ListPodSandboxRequest, NamespaceOption,
    PodSandboxConfig, PodSandboxMetadata, PodSandboxStatusRequest, PodSandboxStatusResponse,
    PortMapping, Protocol, RemovePodSandboxRequest, RunPodSandboxRequest, StopPodSandboxRequest,
};
use serde_json::Value;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::{command, run, MountNs, Netns, TestNet, BUSYBOX};

/// The pause image's name, as the CRI config's `sandbox_image`.
pub const PAUSE_IMAGE: &str = "docker.io/cnirs/pause:test";

/// A containerd with its CRI plugin, one per test.
pub struct CriNode {
    dir: PathBuf,
    config: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    host: Netns,
    mnt: MountNs,
    child: Option<Child>,
    rt: tokio::runtime::Runtime,
    runtime: Option<RuntimeServiceClient<Channel>>,
}

/// A pod sandbox as kubelet asks for it: name, uid, attempt, and port mappings
/// `(protocol, container port, host port, host IP)`.
#[derive(Clone, Debug)]
pub struct PodSpec {
    pub name: String,
    pub uid: String,
    pub attempt: u32,
    pub ports: Vec<(Protocol, u16, u16, String)>,
    pub annotations: HashMap<String, String>,
}

impl PodSpec {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            uid: format!("uid-{name}"),
            attempt: 0,
            ports: Vec::new(),
            annotations: HashMap::new(),
        }
    }

    /// Publishes TCP `container_port` on `host_ip:host_port` (`""` for every address).
    pub fn port(mut self, container_port: u16, host_port: u16, host_ip: &str) -> Self {
        self.ports
            .push((Protocol::Tcp, container_port, host_port, host_ip.to_owned()));
        self
    }

    /// Adds a pod annotation (e.g. `kubernetes.io/ingress-bandwidth`).
    pub fn annotate(mut self, key: &str, value: &str) -> Self {
        self.annotations.insert(key.to_owned(), value.to_owned());
        self
    }

    fn config(&self, log_dir: &Path) -> PodSandboxConfig {
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: self.name.clone(),
                uid: self.uid.clone(),
                namespace: "default".into(),
                attempt: self.attempt,
            }),
            hostname: self.name.clone(),
            log_directory: log_dir.join(&self.uid).display().to_string(),
            port_mappings: self
                .ports
                .iter()
                .map(|(proto, cport, hport, hip)| PortMapping {
                    protocol: *proto as i32,
                    container_port: i32::from(*cport),
                    host_port: i32::from(*hport),
                    host_ip: hip.clone(),
                })
                .collect(),
            annotations: self.annotations.clone(),
            // What kubelet sends for a ClusterFirst pod: the CRI passes it as the `dns`
            // capability.
            dns_config: Some(k8s_cri::v1::DnsConfig {
                servers: vec!["10.96.0.10".into()],
                searches: vec!["default.svc.cluster.local".into()],
                options: vec!["ndots:5".into()],
            }),
            linux: Some(LinuxPodSandboxConfig {
                security_context: Some(k8s_cri::v1::LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption::default()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

fn sh(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sha256_file(path: &Path) -> String {
    let out = sh(command("sha256sum").arg(path));
    format!("sha256:{}", out.split_whitespace().next().unwrap())
}

/// Moves `path` into `blobs/sha256/` of an OCI layout and returns `(digest, size)`.
fn add_blob(layout: &Path, path: &Path) -> (String, u64) {
    let digest = sha256_file(path);
    let size = std::fs::metadata(path).unwrap().len();
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::rename(path, blobs.join(digest.trim_start_matches("sha256:"))).unwrap();
    (digest, size)
}

/// An OCI archive of a pause image: one layer holding `/bin/busybox`, entrypoint
/// `busybox sleep`, named [`PAUSE_IMAGE`]. Built offline with `tar` and `sha256sum`.
pub fn build_pause_image(dir: &Path) -> PathBuf {
    let work = dir.join("pause-build");
    let rootfs = work.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::copy(BUSYBOX, rootfs.join("bin/busybox")).unwrap();
    let layout = work.join("layout");
    std::fs::create_dir_all(&layout).unwrap();
    let layer = work.join("layer.tar");
    sh(command("tar")
        .arg("--owner=0")
        .arg("--group=0")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&layer)
        .arg("bin"));
    let (layer_digest, layer_size) = add_blob(&layout, &layer);
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let config = serde_json::json!({
        "architecture": arch, "os": "linux",
        "config": {"Entrypoint": ["/bin/busybox", "sleep", "2147483647"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]}
    });
    let cfg_path = work.join("config.json");
    std::fs::write(&cfg_path, serde_json::to_vec(&config).unwrap()).unwrap();
    let (cfg_digest, cfg_size) = add_blob(&layout, &cfg_path);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": cfg_digest, "size": cfg_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": layer_size}]
    });
    let man_path = work.join("manifest.json");
    std::fs::write(&man_path, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let (man_digest, man_size) = add_blob(&layout, &man_path);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": man_digest, "size": man_size,
            "platform": {"architecture": arch, "os": "linux"},
            "annotations": {"io.containerd.image.name": PAUSE_IMAGE,
                            "org.opencontainers.image.ref.name": "test"}}]
    });
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let archive = dir.join("pause.tar");
    sh(command("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&archive)
        .args(["oci-layout", "index.json", "blobs"]));
    archive
}

/// A bin dir for the CRI: links to our release binaries, plus `extra` (name, target) links
/// (none but for the bench: no reference plugin is on the tests' path, the CRI's `loopback`
/// and `bandwidth` are ours).
fn bin_dir(dir: &Path, extra: &[(&str, &Path)]) -> PathBuf {
    let bin = dir.join("cni-bin");
    std::fs::create_dir_all(&bin).unwrap();
    for p in [
        "bridge",
        "internal-bridge",
        "host-local",
        "portmap",
        "isolation",
        "firewall",
        "tuning",
        "loopback",
        "bandwidth",
    ] {
        std::os::unix::fs::symlink(crate::plugin_bin(p), bin.join(p)).unwrap();
    }
    for (name, target) in extra {
        std::os::unix::fs::symlink(target, bin.join(name)).unwrap();
    }
    bin
}

/// The containerd 1.6 config (version 2) this node runs with: its own root, state, socket
/// and CRI runtime settings, then the CNI part exactly as shipped in
/// conf-examples/containerd/config-cri.toml with the two directories swapped for the test's.
fn containerd_config(dir: &Path, socket: &Path, conf_dir: &Path, bin_dir: &Path) -> String {
    let shipped = crate::workspace_root().join("conf-examples/containerd/config-cri.toml");
    let cni =
        std::fs::read_to_string(&shipped).unwrap_or_else(|e| panic!("{}: {e}", shipped.display()));
    for default in ["\"/opt/cni/bin\"", "\"/etc/cni/net.d\""] {
        assert!(
            cni.contains(default),
            "{} lost {default}",
            shipped.display()
        );
    }
    let cni = cni
        .replace("\"/opt/cni/bin\"", &format!("\"{}\"", bin_dir.display()))
        .replace("\"/etc/cni/net.d\"", &format!("\"{}\"", conf_dir.display()));
    format!(
        r#"version = 2
root = "{root}"
state = "{state}"

[grpc]
  address = "{socket}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false

{cni}"#,
        root = dir.join("root").display(),
        state = dir.join("state").display(),
        socket = socket.display(),
        pause = PAUSE_IMAGE,
    )
}

impl CriNode {
    /// Starts containerd with the CRI on `conf_dir` (which must hold the conflist already) in
    /// `net`'s host netns, imports the pause image and waits until the CRI sees it.
    #[track_caller]
    pub fn start(net: &TestNet, conf_dir: &Path) -> Self {
        Self::start_with_bins(net, conf_dir, &[])
    }

    /// [`CriNode::start`] with more plugins on the CRI's path: `(type name, binary)`.
    #[track_caller]
    pub fn start_with_bins(net: &TestNet, conf_dir: &Path, extra: &[(&str, &Path)]) -> Self {
        let dir = net.tmp().join("cri");
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("containerd.sock");
        let bin = bin_dir(&dir, extra);
        let config = dir.join("config.toml");
        std::fs::write(&config, containerd_config(&dir, &socket, conf_dir, &bin)).unwrap();
        let (cache, run_dir) = (net.cache_dir(), net.run_dir());
        let mnt = MountNs::new(
            &dir.join("mnt-stage"),
            &[(&cache, "/var/lib/cni"), (&run_dir, "/run/cni-rs")],
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut me = Self {
            log: dir.join("containerd.log"),
            dir,
            config,
            socket,
            host: net.host().clone(),
            mnt,
            child: None,
            rt,
            runtime: None,
        };
        me.spawn();
        let archive = build_pause_image(&me.dir);
        let out = run(me
            .ctr()
            .args([
                "-n",
                "k8s.io",
                "images",
                "import",
                "--snapshotter",
                "overlayfs",
            ])
            .arg(&archive));
        assert!(
            out.success(),
            "ctr images import failed: {out:?}\n{}",
            me.log_text()
        );
        me.wait_for_image();
        me
    }

    /// `ctr --address SOCKET` inside the node's namespaces.
    pub fn ctr(&self) -> std::process::Command {
        let mut c = self.mnt.command(&self.host, "ctr");
        c.arg("--address").arg(&self.socket);
        c
    }

    fn spawn(&mut self) {
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let _ = std::fs::remove_file(&self.socket);
        let child = self
            .mnt
            .command(&self.host, "containerd")
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .expect("cannot start containerd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.socket.exists() {
            assert!(
                Instant::now() < deadline,
                "containerd did not create its socket in 30 s; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // The socket file appears at bind(), a moment before listen(): connect until it
        // answers (ECONNREFUSED in between), within the same deadline.
        let channel = loop {
            let socket = self.socket.clone();
            let res = self.rt.block_on(
                Endpoint::from_static("http://[::]:50051").connect_with_connector(
                    tower::service_fn(move |_: Uri| {
                        let socket = socket.clone();
                        async move {
                            Ok::<_, std::io::Error>(TokioIo::new(
                                tokio::net::UnixStream::connect(socket).await?,
                            ))
                        }
                    }),
                ),
            );
            match res {
                Ok(c) => break c,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "cannot connect to the CRI socket: {e:?}; log:\n{}",
                        self.log_text()
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        };
        self.runtime = Some(RuntimeServiceClient::new(channel));
        // The CRI answers once its CNI config is loaded (NetworkReady).
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let st = self.rt.block_on(
                self.client()
                    .status(k8s_cri::v1::StatusRequest { verbose: false }),
            );
            let ready = st.as_ref().is_ok_and(|r| {
                r.get_ref().status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.r#type == "NetworkReady" && c.status)
                })
            });
            if ready {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the CRI never reported NetworkReady: {st:?}\nlog:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn client(&self) -> RuntimeServiceClient<Channel> {
        self.runtime.clone().expect("containerd is running")
    }

    fn wait_for_image(&self) {
        let socket = self.socket.clone();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let socket = socket.clone();
            let found = self.rt.block_on(async move {
                let ch = Endpoint::from_static("http://[::]:50051")
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let socket = socket.clone();
                        async move {
                            Ok::<_, std::io::Error>(TokioIo::new(
                                tokio::net::UnixStream::connect(socket).await?,
                            ))
                        }
                    }))
                    .await
                    .ok()?;
                let r = ImageServiceClient::new(ch)
                    .image_status(ImageStatusRequest {
                        image: Some(ImageSpec {
                            image: PAUSE_IMAGE.into(),
                            ..Default::default()
                        }),
                        verbose: false,
                    })
                    .await
                    .ok()?;
                r.into_inner().image
            });
            if found.is_some() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the CRI does not see the imported pause image; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `sh -c script` inside the node's mount namespace and host netns (where the CRI's
    /// `/run/netns` is).
    pub fn node_sh(&self, script: &str) -> crate::CmdOutput {
        run(self.mnt.command(&self.host, "sh").args(["-c", script]))
    }

    /// containerd's log so far (for failure messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// RunPodSandbox; the sandbox id, or the CRI's error.
    pub fn run_pod(&self, pod: &PodSpec) -> Result<String, tonic::Status> {
        let req = RunPodSandboxRequest {
            config: Some(pod.config(&self.dir.join("pod-logs"))),
            runtime_handler: String::new(),
        };
        self.rt
            .block_on(self.client().run_pod_sandbox(req))
            .map(|r| r.into_inner().pod_sandbox_id)
    }

    /// RunPodSandbox that must succeed.
    #[track_caller]
    pub fn run_pod_ok(&self, pod: &PodSpec) -> String {
        match self.run_pod(pod) {
            Ok(id) => id,
            Err(e) => panic!(
                "RunPodSandbox {} failed: {e}\ncontainerd log:\n{}",
                pod.name,
                self.log_text()
            ),
        }
    }

    /// PodSandboxStatus (verbose: the `info` JSON carries the pause pid).
    pub fn status(&self, id: &str) -> Result<PodSandboxStatusResponse, tonic::Status> {
        self.rt
            .block_on(self.client().pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: id.into(),
                verbose: true,
            }))
            .map(|r| r.into_inner())
    }

    /// The pod's addresses as PodSandboxStatus reports them (primary first).
    #[track_caller]
    pub fn pod_ips(&self, id: &str) -> Vec<String> {
        let st = self.status(id).expect("PodSandboxStatus");
        let net = st.status.and_then(|s| s.network).unwrap_or_default();
        std::iter::once(net.ip)
            .chain(net.additional_ips.into_iter().map(|i| i.ip))
            .filter(|s| !s.is_empty())
            .collect()
    }

    /// The pod's netns, entered through its pause process.
    #[track_caller]
    pub fn pod_netns(&self, id: &str) -> Netns {
        let st = self.status(id).expect("PodSandboxStatus");
        let info: Value = serde_json::from_str(st.info.get("info").expect("verbose info")).unwrap();
        let pid = info["pid"].as_u64().expect("pause pid in the verbose info");
        Netns::foreign(format!("/proc/{pid}/ns/net"))
    }

    /// The netns path the CRI gave the pod (inside the node's mount namespace).
    #[track_caller]
    pub fn pod_netns_path(&self, id: &str) -> String {
        let st = self.status(id).expect("PodSandboxStatus");
        let info: Value = serde_json::from_str(st.info.get("info").expect("verbose info")).unwrap();
        info["runtimeSpec"]["linux"]["namespaces"]
            .as_array()
            .and_then(|ns| ns.iter().find(|n| n["type"] == "network"))
            .and_then(|n| n["path"].as_str())
            .expect("netns path in the runtime spec")
            .to_owned()
    }

    pub fn stop_pod(&self, id: &str) -> Result<(), tonic::Status> {
        self.rt
            .block_on(self.client().stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: id.into(),
            }))
            .map(|_| ())
    }

    pub fn remove_pod(&self, id: &str) -> Result<(), tonic::Status> {
        self.rt
            .block_on(self.client().remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: id.into(),
            }))
            .map(|_| ())
    }

    /// StopPodSandbox then RemovePodSandbox, as kubelet does when a pod is deleted.
    #[track_caller]
    pub fn stop_and_remove(&self, id: &str) {
        // kubelet retries StopPodSandbox; so do we: right after a pod's pause process dies,
        // containerd 1.6 may answer once with "ttrpc: closed" while its shim goes away.
        let mut tries = 0;
        while let Err(e) = self.stop_pod(id) {
            tries += 1;
            if tries >= 10 {
                panic!("StopPodSandbox {id}: {e}\nlog:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        if let Err(e) = self.remove_pod(id) {
            panic!("RemovePodSandbox {id}: {e}\nlog:\n{}", self.log_text());
        }
    }

    /// Ids of every sandbox the CRI knows.
    pub fn pods(&self) -> Vec<String> {
        self.rt
            .block_on(
                self.client()
                    .list_pod_sandbox(ListPodSandboxRequest { filter: None }),
            )
            .map(|r| r.into_inner().items.into_iter().map(|p| p.id).collect())
            .unwrap_or_default()
    }

    /// SIGTERM to containerd (by PID), then SIGKILL after 10 s; pods and shims keep running.
    pub fn stop_daemon(&mut self) {
        self.runtime = None;
        if let Some(mut child) = self.child.take() {
            let pid = child.id() as libc::pid_t;
            // SAFETY: kill(2) on our own child, not reaped yet (we wait below), so the pid is ours.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// containerd stopped and started again with the same config, root and state.
    pub fn restart(&mut self) {
        self.stop_daemon();
        self.spawn();
    }
}

impl Drop for CriNode {
    fn drop(&mut self) {
        // Pods first (their shims and pause processes exit), then containerd.
        if self.runtime.is_some() {
            for id in self.pods() {
                let _ = self.stop_pod(&id);
                let _ = self.remove_pod(&id);
            }
        }
        self.stop_daemon();
    }
}
