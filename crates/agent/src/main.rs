//! `cnirs-agent --etcd-endpoints URL[,URL...] --underlay IFACE [--node-name N]`: see the
//! `agent` library.

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    agent::cli(&args)
}
