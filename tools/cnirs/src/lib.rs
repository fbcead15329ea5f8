//! `cnirs`, the suite's admin tool: one module per subcommand, `main` only dispatches.
//!
//! ```text
//! cnirs ls [--json]                     the networks of this netns
//! cnirs inspect NETWORK [--json]        one network: attachments, ports, drift
//! cnirs reconcile [--check]             rebuild table inet cnirs from the plugins' state (once)
//! cnirs watch                           stay in the foreground, repair the table whenever it goes
//! cnirs policy apply|delete -f FILE     Kubernetes Namespace/Pod/NetworkPolicy objects, at once
//! cnirs policy ls                       the policies in force and the pods they select
//! cnirs completion bash|zsh|fish|...    shell completion script
//! ```
//! Logs go to stderr (the journal under systemd); `CNIRS_LOG` sets the level (default `info`).
//! Only `ls`, `inspect` and `completion` write to stdout: their output.

use std::{io::Write, process::ExitCode};

use clap::{CommandFactory, Parser, Subcommand};

pub mod inspect;
pub mod policy;
pub mod reconcile;
pub mod watch;

const ABOUT: &str = "Admin tool of the cni-rs CNI plugins";

const LONG_ABOUT: &str = "\
Admin tool of the cni-rs CNI plugins (bridge, internal-bridge, portmap, isolation, firewall).

It works on the network namespace it runs in, as the plugins do: their nftables table
(inet cnirs) and the state under $CNIRS_RUN_DIR that records what they set up. Use
`ip netns exec NS cnirs ...` for another namespace.

`ls` and `inspect` show the networks and who is attached, from what the plugins recorded at
ADD (addresses, MAC, published ports), with no libcni cache and no conflist, and what the
kernel is missing for a network (drift). `reconcile` and `watch` put the table back after a
firewall reload or `nft flush ruleset`.";

const AFTER_LONG_HELP: &str = "\
EXIT STATUS
  0  success
  1  the command failed: unknown network (inspect), state or kernel unreadable, repair
     failed (reconcile), something missing (reconcile --check)
  2  usage error; for reconcile --check: cannot tell

ENVIRONMENT
  CNIRS_RUN_DIR  root of the plugins' state (default /run/cni-rs); one directory per
                 network namespace, netns-<inode>-<cookie>
  CNIRS_LOG      error|warn|info|debug|off: log level on stderr (default info)
  CNIRS_NFT      the nft binary (default: nft on PATH)
  CNIRS_POLICY_DIR  the objects `cnirs policy apply` stores (default /var/lib/cni-rs/policy)

EXAMPLES
  cnirs ls
  cnirs inspect frontend --json | jq '.attachments[].ips'
  ip netns exec host1 cnirs inspect backend
  cnirs reconcile --check || cnirs reconcile
  cnirs completion bash > /etc/bash_completion.d/cnirs";

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "cnirs",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_long_help = AFTER_LONG_HELP,
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// List the networks known in this network namespace
    #[command(
        long_about = "\
List the networks known in this network namespace: one line per network with its bridge,
how many attachments (container id + interface) it has, its subnets, and whether it is
internal (internal-bridge: nothing in, nothing out) or isolated (isolation plugin).
A network is known from the first ADD of one of our plugins until its last DEL or GC.",
        after_long_help = "\
EXIT STATUS
  0  listed (also when there is no network)
  1  the state could not be read
  2  usage error"
    )]
    Ls {
        /// Print a JSON array of {name, bridge, attachments (count), subnets, internal,
        /// isolated}
        #[arg(long)]
        json: bool,
    },
    /// Show one network: attachments, addresses, MACs, ports, and drift
    #[command(
        long_about = "\
Show one network: its bridge, subnets, internal/isolated/masquerade settings, every
attachment (container id, interface name, addresses, MAC, host veth, published ports) and
its drift: what the kernel is missing for it (the table inet cnirs or its rules, the
network's set and map elements, the bridge, a pod's host veth). Drift is checked the way
CNI CHECK and `cnirs reconcile --check` check it; `cnirs reconcile` repairs the table.
An unknown network exits 1.",
        after_long_help = "\
EXIT STATUS
  0  shown, with or without drift (`cnirs reconcile --check` is the yes/no test)
  1  no such network in this namespace, or the state or kernel could not be read
  2  usage error

EXAMPLES
  cnirs inspect frontend
  cnirs inspect frontend --json | jq -r '.attachments[] | [.containerId, .ips[0]] | @tsv'
  ip netns exec host1 cnirs inspect backend --no-trunc"
    )]
    Inspect {
        /// The CNI network name (conflist `name`)
        network: String,
        /// Print one JSON object: name, bridge, subnets, internal, isolated, masquerade,
        /// drift, attachments [{containerId, ifname, ips, mac, hostIfname, ports [{hostIP,
        /// hostPort, containerPort, protocol, containerIP}]}]
        #[arg(long)]
        json: bool,
        /// Show hex container ids whole (human output cuts them to 12 characters)
        #[arg(long)]
        no_trunc: bool,
    },
    /// Rebuild table inet cnirs from the plugins' state
    #[command(long_about = "\
Rebuild the nftables table inet cnirs (skeleton and every element the plugins' state
records) in one transaction, restore the firewall plugin's FORWARD rules, and remove the
state of network namespaces that no longer exist.")]
    Reconcile {
        /// Report what is missing from the kernel, change nothing (exit 0: nothing missing,
        /// 1: something missing, 2: cannot tell)
        #[arg(long, short)]
        check: bool,
    },
    /// Stay in the foreground; repair the table whenever it goes
    #[command(long_about = "\
Run in the foreground in the current network namespace; restore table inet cnirs from the
plugins' state within milliseconds whenever a flush, a table delete or a ruleset reload
removes it. Logs each repair on stderr. Exits 0 on SIGTERM or SIGINT. Holds table
inet cnirs_guard (owned by this process: a flush does not remove it), which drops traffic of
the pods NetworkPolicy isolates while inet cnirs is missing.")]
    Watch {
        /// Do not hold the NetworkPolicy guard table
        #[arg(long)]
        no_guard: bool,
    },
    /// Run the overlay's node agent (foreground; SIGTERM stops it)
    #[command(long_about = "\
Run the overlay's node agent in the foreground, in the host's network namespace: register
this host (the IPv4 address of --underlay is its VTEP) under <prefix>/hosts/<node> on a lease,
and keep the remote FDB entries of every overlay network on this host equal to what etcd's
<prefix>/hosts/ and <prefix>/pods/ say. VXLAN is admitted only from registered hosts (sets
vtep4/vtep6 of table inet cnirs). Survives the loss of an etcd member (lists and watches
again). A node name held by another host's VTEP stops it (exit 1). SIGTERM/SIGINT revoke the
lease and exit 0. Also does what `cnirs watch` does, and enforces the NetworkPolicies under
<prefix>/netpol/ for this host's pods (`cnirs policy --etcd-endpoints`). Same as `cnirs-agent`
plus the watcher and the NetworkPolicy loop.")]
    Agent {
        /// etcd endpoints, http://host:port or https://host:port, comma-separated
        #[arg(long, required = true, value_delimiter = ',')]
        etcd_endpoints: Vec<String>,
        /// CA that verifies the etcd members (required for https://); default
        /// $CNIRS_ETCD_CAFILE
        #[arg(long)]
        etcd_cafile: Option<String>,
        /// Client certificate for etcd's --client-cert-auth; default $CNIRS_ETCD_CERTFILE
        #[arg(long)]
        etcd_certfile: Option<String>,
        /// The client certificate's private key; default $CNIRS_ETCD_KEYFILE
        #[arg(long)]
        etcd_keyfile: Option<String>,
        /// The interface whose IPv4 address is this host's VTEP
        #[arg(long)]
        underlay: String,
        /// Default: $CNIRS_NODE_NAME, else the hostname. Unique per host: a name another
        /// host's VTEP holds stops the agent (exit 1)
        #[arg(long)]
        node_name: Option<String>,
        /// Default /cnirs (the conflists' etcdPrefix)
        #[arg(long)]
        etcd_prefix: Option<String>,
    },
    /// Kubernetes NetworkPolicy on this host: apply, delete, list
    #[command(
        long_about = "\
Kubernetes NetworkPolicy (networking.k8s.io/v1) enforced in table inet cnirs for the pods
the `netpol` plugin attached in this network namespace. `apply -f FILE` and `delete -f FILE`
take Namespace, Pod (labels, container ports) and NetworkPolicy objects as YAML or JSON (one
object, a multi-document stream, or a kind: List; `-` reads stdin), validate them as the API
server does (a file with one invalid object changes nothing) and take effect at once, in one
nftables transaction. `ls` shows each policy and the pods it selects.

With --etcd-endpoints (or $CNIRS_ETCD_ENDPOINTS) the objects live in etcd under
<prefix>/netpol/, shared by every host of the overlay: `apply` and `delete` write them in one
etcd transaction (nothing when one object is invalid) and each host's `cnirs agent` enforces
them for its own pods, peers on other hosts included.",
        after_long_help = "\
EXIT STATUS
  0  done
  1  invalid objects (the message names the field), objects to delete not found, the state
     or the kernel failed
  2  usage error

EXAMPLES
  cnirs policy apply -f deny-all.yaml
  cnirs policy apply -f deny-all.yaml --etcd-endpoints https://10.240.0.1:2379 \\
      --etcd-cafile ca.pem --etcd-certfile admin.pem --etcd-keyfile admin-key.pem
  kubectl get netpol,pods,ns -A -o yaml | cnirs policy apply -f -
  cnirs policy ls"
    )]
    Policy {
        #[command(subcommand)]
        cmd: PolicyCmd,
        #[command(flatten)]
        etcd: policy::EtcdFlags,
    },
    /// Print a shell completion script
    #[command(long_about = "\
Print a completion script for SHELL on stdout, e.g.
  cnirs completion bash > /etc/bash_completion.d/cnirs
  cnirs completion zsh > \"${fpath[1]}/_cnirs\"
  cnirs completion fish > ~/.config/fish/completions/cnirs.fish")]
    Completion {
        /// bash, zsh, fish, elvish or powershell
        shell: clap_complete::Shell,
    },
}

/// `cnirs policy ...`.
#[derive(Debug, Subcommand)]
enum PolicyCmd {
    /// Create or replace the objects of FILE and enforce them at once
    Apply {
        /// YAML or JSON file (`-`: stdin)
        #[arg(short = 'f', long = "filename")]
        file: String,
    },
    /// Delete the objects of FILE (all must exist) and enforce at once
    Delete {
        /// YAML or JSON file (`-`: stdin)
        #[arg(short = 'f', long = "filename")]
        file: String,
    },
    /// Show the policies in force and the pods each selects
    Ls,
}

impl Cmd {
    fn name(&self) -> &'static str {
        match self {
            Cmd::Policy { .. } => "policy",
            Cmd::Ls { .. } => "ls",
            Cmd::Inspect { .. } => "inspect",
            Cmd::Reconcile { .. } => "reconcile",
            Cmd::Watch { .. } => "watch",
            Cmd::Agent { .. } => "agent",
            Cmd::Completion { .. } => "completion",
        }
    }
}

/// Dispatch `args` (without the program name) to a subcommand.
pub fn main(args: &[String]) -> ExitCode {
    let argv = std::iter::once("cnirs".to_owned()).chain(args.iter().cloned());
    let cli = match Cli::try_parse_from(argv) {
        Ok(c) => c,
        Err(e) => {
            // --help and --version are "errors" printed on stdout with status 0.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    netbase::logging::init_with_default(
        &format!("cnirs {}", cli.cmd.name()),
        log::LevelFilter::Info,
    );
    match cli.cmd {
        Cmd::Ls { json } => inspect::ls(json),
        Cmd::Inspect {
            network,
            json,
            no_trunc,
        } => inspect::inspect(&network, json, no_trunc),
        Cmd::Reconcile { check } => {
            let args: Vec<String> = if check {
                vec!["--check".to_owned()]
            } else {
                Vec::new()
            };
            reconcile::run(&args)
        }
        Cmd::Watch { no_guard } => watch::run(&if no_guard {
            vec!["--no-guard".to_owned()]
        } else {
            Vec::new()
        }),
        Cmd::Policy { cmd, etcd } => match cmd {
            PolicyCmd::Apply { file } => policy::change(&file, false, &etcd),
            PolicyCmd::Delete { file } => policy::change(&file, true, &etcd),
            PolicyCmd::Ls => policy::ls(&etcd),
        },
        Cmd::Agent {
            etcd_endpoints,
            etcd_cafile,
            etcd_certfile,
            etcd_keyfile,
            underlay,
            node_name,
            etcd_prefix,
        } => {
            let mut a = vec![
                "--etcd-endpoints".to_owned(),
                etcd_endpoints.join(","),
                "--underlay".to_owned(),
                underlay,
            ];
            if let Some(n) = node_name {
                a.extend(["--node-name".to_owned(), n]);
            }
            if let Some(p) = etcd_prefix {
                a.extend(["--etcd-prefix".to_owned(), p]);
            }
            for (flag, v) in [
                ("--etcd-cafile", etcd_cafile),
                ("--etcd-certfile", etcd_certfile),
                ("--etcd-keyfile", etcd_keyfile),
            ] {
                if let Some(v) = v {
                    a.extend([flag.to_owned(), v]);
                }
            }
            // The agent also does what `cnirs watch` does: a flush or reload of nftables on
            // this host is repaired while the agent runs. The watcher blocks SIGTERM only in
            // its own thread, so the agent's handler still gets it; the process ends with the
            // agent.
            if let Err(e) = std::thread::Builder::new()
                .name("watch".into())
                .spawn(watch::run_beside_agent)
            {
                log::error!("starting the nftables watcher: {e}");
                return ExitCode::from(1);
            }
            // And it enforces the NetworkPolicies in etcd for this host's pods.
            let np_args = a.clone();
            if let Err(e) = std::thread::Builder::new()
                .name("netpol".into())
                .spawn(move || policy::run_beside_agent(&np_args))
            {
                log::error!("starting the netpol loop: {e}");
                return ExitCode::from(1);
            }
            agent::cli(&a)
        }
        Cmd::Completion { shell } => {
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "cnirs", &mut buf);
            match std::io::stdout().write_all(&buf) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    log::error!("writing the script: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_each_subcommand() {
        let p = |v: &[&str]| Cli::try_parse_from(v.iter().copied()).map(|c| c.cmd);
        match p(&[
            "cnirs",
            "agent",
            "--etcd-endpoints",
            "http://10.240.0.1:2379,http://10.240.0.2:2379",
            "--underlay",
            "ul0",
        ])
        .unwrap()
        {
            Cmd::Agent {
                etcd_endpoints,
                underlay,
                node_name: None,
                etcd_prefix: None,
                etcd_cafile: None,
                ..
            } => {
                assert_eq!(etcd_endpoints.len(), 2);
                assert_eq!(underlay, "ul0");
            }
            other => panic!("{other:?}"),
        }
        assert!(p(&["cnirs", "agent", "--underlay", "ul0"]).is_err());
        assert!(matches!(
            p(&["cnirs", "ls", "--json"]).unwrap(),
            Cmd::Ls { json: true }
        ));
        assert!(matches!(
            p(&["cnirs", "inspect", "frontend"]).unwrap(),
            Cmd::Inspect { ref network, json: false, no_trunc: false } if network == "frontend"
        ));
        assert!(matches!(
            p(&["cnirs", "reconcile", "--check"]).unwrap(),
            Cmd::Reconcile { check: true }
        ));
        match p(&[
            "cnirs",
            "policy",
            "apply",
            "-f",
            "np.yaml",
            "--etcd-endpoints",
            "https://10.240.0.1:2379,https://10.240.0.2:2379",
            "--etcd-cafile",
            "/ca.pem",
        ])
        .unwrap()
        {
            Cmd::Policy {
                cmd: PolicyCmd::Apply { file },
                etcd,
            } => {
                assert_eq!(file, "np.yaml");
                assert_eq!(etcd.etcd_endpoints.len(), 2);
                assert_eq!(etcd.etcd_cafile.as_deref(), Some("/ca.pem"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            p(&["cnirs", "policy", "ls"]).unwrap(),
            Cmd::Policy { cmd: PolicyCmd::Ls, ref etcd } if etcd.etcd_endpoints.is_empty()
        ));
        assert!(p(&["cnirs", "inspect"]).is_err(), "NETWORK is required");
        assert!(p(&["cnirs", "completion", "tcsh"]).is_err());
        assert!(p(&["cnirs", "bogus"]).is_err());
    }

    #[test]
    fn completion_scripts_name_the_subcommands() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "cnirs", &mut buf);
            let s = String::from_utf8(buf).unwrap();
            for sub in ["ls", "inspect", "reconcile", "watch", "completion"] {
                assert!(s.contains(sub), "{shell}: {sub} missing");
            }
        }
    }

    #[test]
    fn long_help_documents_exit_codes() {
        let h = Cli::command().render_long_help().to_string();
        assert!(
            h.contains("EXIT STATUS") && h.contains("ENVIRONMENT"),
            "{h}"
        );
    }
}
