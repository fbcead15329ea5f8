//! host-local IPAM: a drop-in for the reference plugin (`plugins/ipam/host-local`).
//!
//! Same config, same answers, same files under `dataDir` (leases written by either plugin are
//! honoured by the other), plus GC and STATUS (CNI 1.1), crash-safe reservation files, and an
//! ADD repeated for the same (container, ifname) answering the same address.
//!
//! - [`config`]: the `ipam` section, validated with errors naming the field;
//! - [`range`]: ranges, range sets, the round-robin candidate order;
//! - [`allocator`]: the pure allocation logic over a [`store::Store`];
//! - [`store`]: the store trait and an in-memory store; [`disk`]: the reference's disk layout.

pub mod allocator;
pub mod disk;
pub mod error;
pub mod index;
pub mod store;

/// The config and ranges, shared with etcd-ipam (crates/ipamconf).
pub use ipamconf::{config, range};

use cni_core::{CniError, CniResult, IpConfig, Plugin, Request};

use crate::{
    config::IpamConfig,
    disk::DiskStore,
    error::Error,
    store::{Owner, Store},
};

pub use error::Error as HostLocalError;

/// The plugin, for `cni_core::skel::run`.
#[derive(Debug, Default, Clone, Copy)]
pub struct HostLocal;

fn load(req: &Request) -> Result<IpamConfig, CniError> {
    config::parse(&req.stdin, req.version, &req.args)
}

impl Plugin for HostLocal {
    fn name(&self) -> &'static str {
        "host-local"
    }

    fn known_args(&self) -> &'static [&'static str] {
        &["IP"]
    }

    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        let cfg = load(req)?;
        let requested = cfg.requested_per_set()?;
        let dns = match &cfg.resolv_conf {
            Some(p) => config::read_resolv_conf(p)?,
            None => Default::default(),
        };
        let network = req.conf.name.as_str();
        let mut store = DiskStore::open(&cfg.data_dir, network)?;
        let mut ips = Vec::with_capacity(cfg.range_sets.len());
        let mut fresh = Vec::new();
        for (index, set) in cfg.range_sets.iter().enumerate() {
            let got = allocator::allocate(
                &mut store,
                network,
                index,
                set,
                &req.container_id,
                &req.ifname,
                requested[index],
            );
            match got {
                Ok(a) => {
                    if a.new {
                        fresh.push(a.address.ip());
                    }
                    ips.push(IpConfig {
                        address: a.address,
                        gateway: Some(a.gateway),
                        interface: None,
                    });
                }
                Err(e) => {
                    // Undo what this call reserved; leases held before stay.
                    for ip in fresh {
                        if let Err(re) = store.release(ip) {
                            log::warn!("rolling back {ip}: {re}");
                        }
                    }
                    return Err(e.into());
                }
            }
        }
        Ok(ipamconf::result(&req.tag(), ips, cfg.routes, dns))
    }

    fn del(&self, req: &Request) -> Result<(), CniError> {
        let cfg = load(req)?;
        let Some(mut store) = DiskStore::open_existing(&cfg.data_dir, &req.conf.name)? else {
            return Ok(());
        };
        let released = store.release_by_id(&req.container_id, &req.ifname)?;
        log::info!("{}: released {released:?}", req.tag());
        // An empty or unreadable lease file seen under the lock is a writer killed between
        // create and write (a runtime's ADD timed out): no owner will ever DEL it, so the
        // network's next DEL removes it. DEL goes on past a failure here.
        if let Err(e) = store.drop_stale() {
            log::warn!("{}: removing stale reservations: {e}", req.tag());
        }
        Ok(())
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        let cfg = load(req)?;
        let network = req.conf.name.as_str();
        let missing = || Error::NotReserved {
            container: Owner::new(&req.container_id, &req.ifname).to_string(),
            network: network.to_string(),
            index: 0,
            ranges: cfg
                .range_sets
                .first()
                .map(|s| s.to_string())
                .unwrap_or_default(),
        };
        let store = DiskStore::open_existing(&cfg.data_dir, network)?.ok_or_else(missing)?;
        allocator::check(
            &store,
            network,
            &cfg.range_sets,
            &req.container_id,
            &req.ifname,
        )?;
        Ok(())
    }

    fn gc(&self, req: &Request) -> Result<(), CniError> {
        let cfg = load(req)?;
        let Some(mut store) = DiskStore::open_existing(&cfg.data_dir, &req.conf.name)? else {
            return Ok(());
        };
        let released = allocator::gc(&mut store, req.valid_attachments())?;
        if !released.is_empty() {
            log::info!("GC {}: released {released:?}", req.conf.name);
        }
        Ok(())
    }

    fn status(&self, req: &Request) -> Result<(), CniError> {
        let cfg = load(req)?;
        let empty = store::MemStore::default();
        let existing = DiskStore::open_existing(&cfg.data_dir, &req.conf.name)?;
        let store: &dyn Store = match &existing {
            Some(s) => s,
            None => &empty,
        };
        for (index, set) in cfg.range_sets.iter().enumerate() {
            if allocator::free_addresses(store, set) == 0 {
                return Err(CniError::new(
                    cni_core::ErrorCode::NotAvailable,
                    format!(
                        "no IP addresses available in range set {index} ({set}) of network {}",
                        req.conf.name
                    ),
                ));
            }
        }
        Ok(())
    }
}
