//! One netns of the fake kernel: its links, addresses, routes and IPv6 switches.

use std::collections::{BTreeMap, BTreeSet};

use ipnetwork::IpNetwork;

use crate::{Link, NetopsError, RouteInfo};

/// One netns of the fake.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FakeNs {
    /// Links by name (index, flags, master as the real kernel reports them).
    pub links: BTreeMap<String, Link>,
    /// Addresses by link name.
    pub addrs: BTreeMap<String, Vec<IpNetwork>>,
    /// Routes (`oif` = the link's index).
    pub routes: Vec<RouteInfo>,
    /// Links whose `disable_ipv6` was set.
    pub no_ipv6: BTreeSet<String>,
}

impl FakeNs {
    /// The names of the links, in order.
    pub fn names(&self) -> Vec<String> {
        self.links.keys().cloned().collect()
    }

    pub(super) fn require(&self, name: &str, label: &str) -> Result<&Link, NetopsError> {
        self.links
            .get(name)
            .ok_or_else(|| NetopsError::LinkNotFound {
                name: name.to_string(),
                netns: label.to_string(),
            })
    }

    pub(super) fn require_mut(
        &mut self,
        name: &str,
        label: &str,
    ) -> Result<&mut Link, NetopsError> {
        self.links
            .get_mut(name)
            .ok_or_else(|| NetopsError::LinkNotFound {
                name: name.to_string(),
                netns: label.to_string(),
            })
    }

    pub(super) fn remove(&mut self, name: &str) -> Option<Link> {
        let l = self.links.remove(name)?;
        self.addrs.remove(name);
        self.no_ipv6.remove(name);
        self.routes.retain(|r| r.oif != Some(l.index));
        for other in self.links.values_mut() {
            if other.master == Some(l.index) {
                other.master = None;
            }
        }
        Some(l)
    }
}
