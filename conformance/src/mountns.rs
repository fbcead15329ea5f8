//! A private mount namespace for the real clients (podman, containerd): their fixed paths
//! (`/etc/cni/net.d`, `/opt/cni/bin`, `/var/lib/...`) are bind-mounted from the test's temp
//! dirs, so nothing they write reaches the machine.

// Fixture code run only by tests: a fixture that cannot be set up is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
};

use crate::{command, Netns};

/// A private mount namespace held open by a `sleep` (killed on drop): tmpfs over `/run`,
/// `/var/lib` and `/opt` (so nothing the clients write there reaches the machine), then each
/// `(source, target)` bind-mounted. Sources are first bind-mounted under `stage` (a dir of the
/// test's temp dir), so a source under a tmpfs'd tree (e.g. `CNIRS_BIN_DIR=/opt/cni/bin`)
/// stays visible. Targets outside those tmpfs must already exist (a file source goes onto an
/// existing file, e.g. `/etc/resolv.conf`).
pub struct MountNs {
    holder: Child,
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

impl MountNs {
    #[track_caller]
    pub fn new(stage: &Path, binds: &[(&Path, &str)]) -> Self {
        let mut script = String::from("set -e\n");
        for (n, (src, _)) in binds.iter().enumerate() {
            let staged = stage.join(n.to_string());
            // A file is bind-mounted onto a file, a directory onto a directory.
            if src.is_file() {
                std::fs::create_dir_all(stage).unwrap();
                std::fs::write(&staged, b"").unwrap();
            } else {
                std::fs::create_dir_all(&staged).unwrap();
            }
            script.push_str(&format!(
                "mount --bind {} {}\n",
                sh_quote(&src.display().to_string()),
                sh_quote(&staged.display().to_string())
            ));
        }
        script.push_str(
            "mount -t tmpfs cnirs-run /run\nmount -t tmpfs cnirs-varlib /var/lib\n\
             mount -t tmpfs cnirs-opt /opt\n",
        );
        for (n, (_, dst)) in binds.iter().enumerate() {
            let tmpfs = ["/run/", "/var/lib/", "/opt/"]
                .iter()
                .any(|p| dst.starts_with(p));
            assert!(
                tmpfs || Path::new(dst).exists(),
                "{dst} must exist on this machine as a mount point (install the client's \
                 package, which creates it)"
            );
            if tmpfs {
                script.push_str(&format!("mkdir -p {}\n", sh_quote(dst)));
            }
            script.push_str(&format!(
                "mount --bind {} {}\n",
                sh_quote(&stage.join(n.to_string()).display().to_string()),
                sh_quote(dst)
            ));
        }
        script.push_str("echo ready\nexec sleep 600\n");
        let mut holder = command("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cannot start unshare (util-linux)");
        let mut line = String::new();
        let stdout = holder.stdout.take().expect("holder stdout");
        BufReader::new(stdout).read_line(&mut line).unwrap();
        if line.trim() != "ready" {
            let _ = holder.kill();
            let _ = holder.wait();
            panic!("private mount namespace setup failed (script:\n{script})");
        }
        Self { holder }
    }

    /// A mount namespace that sees the machine's mounts (as a slave: netns created later under
    /// `/run/netns` show up in it) except for a private, empty tmpfs on each of `dirs`
    /// (e.g. `/run/cni-rs`, the plugins' default state root), created if missing. Tests that
    /// run the plugins with their default paths do it in here, so they share nothing.
    #[track_caller]
    pub fn private_dirs(dirs: &[&str]) -> Self {
        let mut script = String::from("set -e\n");
        for d in dirs {
            script.push_str(&format!(
                "mkdir -p {0}\nmount -t tmpfs cnirs-private {0}\n",
                sh_quote(d)
            ));
        }
        script.push_str("echo ready\nexec sleep 600\n");
        let mut holder = command("unshare")
            .args(["--mount", "--propagation", "slave", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cannot start unshare (util-linux)");
        let mut line = String::new();
        let stdout = holder.stdout.take().expect("holder stdout");
        BufReader::new(stdout).read_line(&mut line).unwrap();
        if line.trim() != "ready" {
            let _ = holder.kill();
            let _ = holder.wait();
            panic!("private mount namespace setup failed (script:\n{script})");
        }
        Self { holder }
    }

    /// `/proc/PID/ns/mnt` of the namespace.
    pub fn path(&self) -> String {
        format!("/proc/{}/ns/mnt", self.holder.id())
    }

    /// `nsenter --mount=/proc/PID/ns/mnt --net=NETNS program` (cleared environment).
    pub fn command(&self, netns: &Netns, program: &str) -> Command {
        let mut cmd = command("nsenter");
        cmd.arg(format!("--mount=/proc/{}/ns/mnt", self.holder.id()))
            .arg(format!("--net={}", netns.path_str()))
            .arg(program);
        cmd
    }
}

impl Drop for MountNs {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}
