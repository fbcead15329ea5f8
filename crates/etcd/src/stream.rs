//! The long-lived parts: a lease kept alive by a thread, and a watch stream that resumes on
//! another member.

use super::*;

#[derive(Default)]
pub(crate) struct KeeperState {
    pub(crate) stop: bool,
    pub(crate) lost: bool,
    /// When the last renewal that succeeded was sent.
    pub(crate) renewed: Option<Instant>,
}

/// Keeps a lease alive until dropped; dropping it does not revoke the lease.
pub struct LeaseKeeper {
    pub(crate) id: i64,
    pub(crate) state: Arc<Mutex<KeeperState>>,
    pub(crate) handle: Option<thread::JoinHandle<()>>,
}

impl LeaseKeeper {
    pub fn id(&self) -> i64 {
        self.id
    }
    /// The lease expired before a renewal reached etcd (its keys are gone).
    pub fn lost(&self) -> bool {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).lost
    }
    /// When the last renewal that succeeded was sent (the lease lives at least its TTL from
    /// then); `None` before the first.
    pub fn renewed(&self) -> Option<Instant> {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).renewed
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).stop = true;
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

type FrameStream = serde_json::StreamDeserializer<
    'static,
    serde_json::de::IoRead<BufReader<Box<dyn Read + Send>>>,
    wire::WatchFrame,
>;

/// A watch: an iterator of [`WatchEvent`]s, blocking in `next()`.
pub struct Watch {
    pub(crate) client: Client,
    pub(crate) key: Vec<u8>,
    pub(crate) range_end: Vec<u8>,
    /// Where a reopened stream starts (0: from now).
    pub(crate) next_revision: i64,
    pub(crate) stream: Option<FrameStream>,
    pub(crate) pending: std::collections::VecDeque<WatchEvent>,
    pub(crate) done: bool,
}

impl Watch {
    /// Opens the stream on the first endpoint that takes it (failover as for every call).
    pub(crate) fn open(&mut self) -> Result<(), EtcdError> {
        let body = wire::watch_body(&self.key, &self.range_end, self.next_revision, true);
        let (stream, created_at) = self
            .client
            .failover("/v3/watch", |ep| self.open_on(ep, &body))?;
        if self.next_revision <= 0 {
            // "From now" means from the first open: a reopened stream must not skip what
            // happened in between.
            self.next_revision = created_at + 1;
        }
        self.stream = Some(stream);
        Ok(())
    }

    /// Opens one stream; returns it with the revision it was created at.
    fn open_on(&self, ep: &str, body: &Value) -> Result<(FrameStream, i64), Attempt> {
        let resp = self
            .client
            .inner
            .stream_agent
            .post(&format!("{ep}/v3/watch"))
            .header("Content-Type", "application/json")
            .send(body.to_string().as_bytes())
            .map_err(|e| transport_failure(&e, self.client.with_cert(), ""))?;
        if resp.status().as_u16() != 200 {
            return Err(Attempt::Retry(format!("HTTP {}", resp.status())));
        }
        let reader: Box<dyn Read + Send> = Box::new(resp.into_body().into_reader());
        let mut stream = serde_json::Deserializer::from_reader(BufReader::new(reader)).into_iter();
        // The first frame says "created" (or canceled, or an error): a member without quorum
        // or a compacted start revision shows here.
        match stream.next() {
            Some(Ok(wire::WatchFrame {
                result: Some(r), ..
            })) if r.created && !r.canceled => Ok((stream, r.header.revision)),
            Some(Ok(wire::WatchFrame {
                result: Some(r), ..
            })) if r.compact_revision > 0 => Err(Attempt::Fatal(EtcdError::Compacted {
                requested: self.next_revision,
                compact_revision: r.compact_revision,
            })),
            Some(Ok(wire::WatchFrame { error: Some(e), .. })) => Err(Attempt::Retry(format!(
                "grpc code {}: {}",
                e.grpc_code, e.message
            ))),
            Some(Ok(other)) => Err(Attempt::Retry(format!("unexpected first frame {other:?}"))),
            Some(Err(e)) => Err(Attempt::Retry(format!("reading the stream: {e}"))),
            None => Err(Attempt::Retry("stream closed before it was created".into())),
        }
    }

    /// The revision a reopened stream would start from.
    pub fn next_revision(&self) -> i64 {
        self.next_revision
    }
}

impl Iterator for Watch {
    type Item = Result<WatchEvent, EtcdError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return Some(Ok(ev));
            }
            if self.done {
                return None;
            }
            if self.stream.is_none() {
                if let Err(e) = self.open() {
                    if matches!(e, EtcdError::Compacted { .. }) {
                        self.done = true;
                    }
                    return Some(Err(e));
                }
            }
            let frame = self.stream.as_mut().and_then(|s| s.next());
            match frame {
                Some(Ok(wire::WatchFrame {
                    result: Some(r), ..
                })) => {
                    if r.compact_revision > 0 {
                        self.done = true;
                        return Some(Err(EtcdError::Compacted {
                            requested: self.next_revision,
                            compact_revision: r.compact_revision,
                        }));
                    }
                    if r.canceled {
                        // Canceled by the server (e.g. the member lost its leader for long):
                        // reopen elsewhere.
                        log::info!("etcd watch canceled ({}); reopening", r.cancel_reason);
                        self.stream = None;
                        continue;
                    }
                    if r.events.is_empty() && !r.created {
                        // A progress notify: everything up to header.revision was sent.
                        self.next_revision = self.next_revision.max(r.header.revision + 1);
                    }
                    for ev in r.events {
                        let kv = Kv::from(ev.kv);
                        self.next_revision = self.next_revision.max(kv.mod_revision + 1);
                        let kind = if ev.kind == "DELETE" {
                            EventKind::Delete
                        } else {
                            EventKind::Put
                        };
                        self.pending.push_back(WatchEvent {
                            kind,
                            kv,
                            prev_kv: ev.prev_kv.map(Kv::from),
                        });
                    }
                }
                Some(Ok(wire::WatchFrame { error: Some(e), .. })) => {
                    log::info!("etcd watch stream error ({}); reopening", e.message);
                    self.stream = None;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    log::info!("etcd watch stream broke ({e}); reopening");
                    self.stream = None;
                }
                None => {
                    log::info!("etcd watch stream ended; reopening");
                    self.stream = None;
                }
            }
        }
    }
}
