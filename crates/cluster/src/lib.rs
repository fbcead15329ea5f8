//! The cluster state in etcd, as one crate that every party to it uses: the overlay plugin and
//! etcd-ipam write it, the node agent (and so `cnirs agent`) reads it. Nothing here talks to
//! etcd or the kernel: record types, key names, and the names of the devices the agent finds
//! by name.
//!
//! - [`schema`]: `hosts/`, `pods/`, `networks/` (overlay plugin and agent);
//! - [`ipam`]: `ipam/<network>/blocks/` and `ips/` (etcd-ipam).

pub mod ipam;
pub mod schema;

/// `etcdPrefix` default (the conflists' key, the agent's `--etcd-prefix`).
pub const DEFAULT_PREFIX: &str = "/cnirs";

/// Largest VNI (24 bits).
pub const VNI_MAX: u32 = 16_777_215;

/// `cnirsvx<vni>`: the VXLAN device of an overlay network on a host; at most 15 bytes for any
/// VNI. The agent finds the devices it programs by this name.
pub fn vxlan_name(vni: u32) -> String {
    format!("cnirsvx{vni}")
}

/// The VNI of a device named by [`vxlan_name`].
pub fn vni_of_name(name: &str) -> Option<u32> {
    name.strip_prefix("cnirsvx")?
        .parse()
        .ok()
        .filter(|v| (1..=VNI_MAX).contains(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_round_trip_and_fit_ifnamsiz() {
        assert_eq!(vni_of_name(&vxlan_name(42)), Some(42));
        assert_eq!(vxlan_name(VNI_MAX).len(), 15);
        assert_eq!(vni_of_name("cnirsvx0"), None);
        assert_eq!(vni_of_name("cnirsvx16777216"), None);
        assert_eq!(vni_of_name("cnirsbr42"), None);
    }
}
