#[allow(clippy::exit)]
fn main() {
    std::process::exit(cni_core::skel::run(&etcd_ipam::EtcdIpam::from_env()))
}
