//! SIGHUP: the whole config again. [`stage`] reads, compiles and checks all of it (files,
//! certificates, key sets, the data plane's lists) and builds every worker's new proxy
//! while the old config keeps serving; only when nothing is wrong does [`Staged::commit`]
//! swap it in, part by part, without a failure left to meet. A config with problems changes
//! nothing: each problem is logged.
//!
//! One more reloadable part is one more field of [`Staged`], filled in [`stage`] (where it
//! may fail) and applied in [`Staged::commit`] (where it may not).

use super::run::{apply_ipv6_prefix, StartError};
use crate::abuse::AbuseEngine;
use crate::access_log::{self, AccessLog};
use crate::config::diff::{self, Changes};
use crate::config::{Config, Plan};
use crate::deny::{DenyStore, Protected};
use crate::ebpf::{DataPlane, Target};
use crate::fleet::Fleet;
use crate::jwt::{Verifier, VerifierConfig, DEFAULT_ISSUER};
use crate::keys::{JwksSource, KeyStore};
use crate::metrics::Metrics;
use crate::proxy::live::LiveProxy;
use crate::proxy::Proxy;
use crate::tls::CertStore;
use gateway_common::DataPlaneConfig;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// How long after a failed first JWKS fetch at start the background refresh tries again.
const FIRST_FETCH_RETRY: Duration = Duration::from_secs(5);

/// The proxy's parts a reload replaces: each worker's live proxy, the background tasks of
/// the config it serves (health checks by upstream name, JWKS refreshes) and the
/// certificates.
pub(super) struct RunningProxy {
    workers: Vec<Arc<LiveProxy>>,
    metrics: Arc<Metrics>,
    certs: Option<Arc<CertStore>>,
    health: HashMap<String, JoinHandle<()>>,
    jwks: Vec<JoinHandle<()>>,
    /// The access log every worker's proxy writes to, and its writer (SIGUSR1 reopens
    /// its file); `None` when it is off.
    access: Option<(AccessLog, access_log::Writer)>,
}

impl RunningProxy {
    /// `built` put into service: the live proxies the workers are started with.
    pub(super) fn start(
        built: Proxies,
        jwks: Vec<Fetched>,
        metrics: Arc<Metrics>,
        certs: Option<Arc<CertStore>>,
        access: Option<(AccessLog, access_log::Writer)>,
    ) -> Self {
        let mut running = Self {
            workers: Vec::new(),
            metrics,
            certs,
            health: HashMap::new(),
            jwks: Vec::new(),
            access,
        };
        running.install(built, jwks, None);
        running
    }

    pub(super) fn workers(&self) -> &[Arc<LiveProxy>] {
        &self.workers
    }

    /// The access log's writer, when the log is on.
    pub(super) fn access_writer(&self) -> Option<&access_log::Writer> {
        self.access.as_ref().map(|(_, w)| w)
    }

    /// The access log's writer, taken at shutdown to write what is still queued.
    pub(super) fn take_access_writer(&mut self) -> Option<access_log::Writer> {
        self.access.take().map(|(_, w)| w)
    }

    fn access_log(&self) -> Option<&AccessLog> {
        self.access.as_ref().map(|(l, _)| l)
    }

    /// Swaps every worker to `built` (requests in flight finish on the proxy they started
    /// with), keeps the health checks of upstreams that did not change (`old`: the plan
    /// served until now) and stops the others', and replaces the JWKS refresh tasks.
    fn install(&mut self, built: Proxies, jwks: Vec<Fetched>, old: Option<&Plan>) {
        let Proxies {
            proxies, verifier, ..
        } = built;
        let proxies: Vec<Arc<Proxy>> = proxies.into_iter().map(Arc::new).collect();
        if let Some(last) = proxies.last() {
            self.health_checks(last, old);
            // Every worker's copy shares its servers' health: one copy is enough for
            // `gateway_upstream_server_up`.
            self.metrics.set_upstreams(last.upstreams().to_vec());
        }
        if self.workers.is_empty() {
            self.workers = proxies.into_iter().map(LiveProxy::new).collect();
        } else {
            for (live, p) in self.workers.iter().zip(proxies) {
                live.replace(p);
            }
        }
        if let Some(v) = verifier {
            self.metrics.set_verifier(v);
        }
        for t in self.jwks.drain(..) {
            t.abort();
        }
        let mut sources = Vec::with_capacity(jwks.len());
        for Fetched {
            issuer,
            source,
            next,
        } in jwks
        {
            self.jwks.push(source.spawn(next));
            sources.push((issuer, source));
        }
        self.metrics.set_jwks_sources(sources);
    }

    /// One active health check per upstream that has one; an upstream whose config did
    /// not change keeps its task (and its verdicts), the others' tasks end here.
    fn health_checks(&mut self, proxy: &Proxy, old: Option<&Plan>) {
        let mut kept = HashMap::new();
        for (u, cfg) in proxy.upstreams().iter().zip(proxy.plan().upstreams()) {
            let unchanged = old.is_some_and(|p| p.unchanged_upstream(cfg).is_some());
            if let Some(task) = self.health.remove(&cfg.name).filter(|_| unchanged) {
                kept.insert(cfg.name.clone(), task);
            } else if let Some(hc) = &cfg.health_check {
                let task = tokio::spawn(u.clone().health_checks(
                    hc.path.clone(),
                    hc.interval.0,
                    hc.timeout.0,
                ));
                kept.insert(cfg.name.clone(), task);
            }
        }
        for (_, task) in self.health.drain() {
            task.abort();
        }
        self.health = kept;
    }
}

/// Every worker's proxy for one plan, built but not serving yet.
pub(super) struct Proxies {
    proxies: Vec<Proxy>,
    verifier: Option<Arc<Verifier>>,
    /// JWKS URL sources by issuer, not fetched yet.
    jwks: Vec<(String, JwksSource)>,
}

/// A JWKS source after its first fetch, and when it refreshes next.
pub(super) struct Fetched {
    issuer: String,
    source: JwksSource,
    next: Duration,
}

impl Proxies {
    /// One proxy per worker; the last is the one the others were copied from. `running`:
    /// each worker's proxy until now (a reload), whose unchanged upstreams are kept.
    pub(super) fn build(
        plan: &Arc<Plan>,
        metrics: &Arc<Metrics>,
        abuse: Option<&Arc<AbuseEngine>>,
        access: Option<&AccessLog>,
        workers: usize,
        running: Option<&[Arc<LiveProxy>]>,
    ) -> Result<Self, StartError> {
        let mut jwks = Vec::new();
        let mut verifier = None;
        let mut base = Proxy::new(
            plan,
            |jwt| {
                let v = build_verifier(jwt, &mut jwks)?;
                verifier = Some(v.clone());
                Ok::<_, StartError>(v)
            },
            metrics.clone(),
        )?;
        if let Some(a) = abuse {
            base = base.with_abuse(a.clone());
        }
        if let Some(log) = access {
            base = base.with_access_log(log.clone());
        }
        let mut proxies: Vec<Proxy> = (1..workers.max(1)).map(|_| base.for_worker()).collect();
        proxies.push(base);
        if let Some(running) = running {
            proxies = proxies
                .into_iter()
                .zip(running)
                .map(|(p, old)| p.continuing(&old.peek()))
                .collect();
        }
        Ok(Self {
            proxies,
            verifier,
            jwks,
        })
    }

    /// The first fetch of every JWKS URL, and one problem per failed fetch. At start a
    /// failure is logged and the refresh task tries again soon; a reload is refused
    /// instead, since the running config has keys that work.
    pub(super) async fn fetch_jwks(&mut self) -> (Vec<Fetched>, Vec<String>) {
        let mut fetched = Vec::with_capacity(self.jwks.len());
        let mut problems = Vec::new();
        for (issuer, source) in self.jwks.drain(..) {
            let next = match source.refresh().await {
                Ok(d) => d,
                Err(e) => {
                    problems.push(format!(
                        "issuer `{issuer}`: first fetch of {} failed: {e}",
                        source.url()
                    ));
                    FIRST_FETCH_RETRY
                }
            };
            fetched.push(Fetched {
                issuer,
                source,
                next,
            });
        }
        (fetched, problems)
    }
}

/// The key store and verifier for `[jwt]`: file sources are loaded now, JWKS URL sources are
/// handed back in `jwks` to be fetched and spawned.
fn build_verifier(
    jwt: &VerifierConfig,
    jwks: &mut Vec<(String, JwksSource)>,
) -> Result<Arc<Verifier>, StartError> {
    let (store, urls) = KeyStore::from_config(&jwt.keys)?;
    let (v, named_urls) = Verifier::load(jwt.clone(), store)?;
    jwks.extend(urls.into_iter().map(|s| (DEFAULT_ISSUER.to_owned(), s)));
    jwks.extend(named_urls);
    Ok(Arc::new(v))
}

/// What a reload may change, as it runs now.
pub(super) struct Running<'a> {
    pub plan: &'a mut Arc<Plan>,
    pub plane: Option<&'a mut DataPlane>,
    pub proxy: Option<&'a mut RunningProxy>,
    pub abuse: &'a mut Option<Arc<AbuseEngine>>,
    pub deny: &'a Arc<DenyStore>,
    pub fleet: Option<&'a mut Fleet>,
}

/// A reload checked in full: nothing running has changed yet.
pub(super) struct Staged {
    plan: Arc<Plan>,
    changes: Changes,
    /// The abuse engine the new config feeds: the running one when `[abuse]` is unchanged
    /// (its counts go on), else a new one (`replace_abuse`).
    abuse: Option<Arc<AbuseEngine>>,
    replace_abuse: bool,
    proxies: Option<(Proxies, Vec<Fetched>)>,
    /// A new access log (its output or `query` changed): `Some(None)` turns it off.
    access: Option<Option<(AccessLog, access_log::Writer)>>,
    certs: Option<CertStore>,
    ebpf: Option<DataPlaneLists>,
    /// What no ban may cover: the allow list, and what the new config depends on.
    protected: (Vec<ipnet::IpNet>, Protected),
}

/// The data plane's settings and lists from `[ebpf]`, converted.
struct DataPlaneLists {
    kernel: DataPlaneConfig,
    allow: Vec<ipnet::IpNet>,
    deny: Vec<Target>,
}

/// SIGHUP: reads, checks and applies the config at `path`; on any problem the running
/// config stays and each problem is logged.
pub(super) async fn reload(path: &Path, mut running: Running<'_>) {
    match stage(path, &running).await {
        Ok(staged) => staged.commit(&mut running),
        Err(problems) => {
            for p in &problems {
                tracing::error!("reload: {p}");
            }
            tracing::error!(
                problems = problems.len(),
                "reload refused: keeping the running config"
            );
        }
    }
}

/// Everything of a reload that can fail, done beside the running config.
async fn stage(path: &Path, running: &Running<'_>) -> Result<Staged, Vec<String>> {
    let lines = |e: &dyn std::fmt::Display| -> Vec<String> {
        e.to_string().lines().map(str::to_owned).collect()
    };
    // `check` also reads the certificate and key files, naming file, line and key.
    let plan = Config::check(path).map_err(|e| lines(&e))?;
    let plan = Arc::new(plan.keeping_restart_only(running.plan));
    let changes = diff::diff(running.plan, &plan);
    let mut problems = Vec::new();

    let replace_abuse = !diff::same_settings(&running.plan.abuse, &plan.abuse);
    let abuse = match (&plan.abuse, replace_abuse) {
        (_, false) => running.abuse.clone(),
        (Some(cfg), true) => Some(Arc::new(AbuseEngine::new(cfg, running.deny.clone()))),
        (None, true) => None,
    };

    let mut proxies = None;
    let mut certs = None;
    let mut access = None;
    if let (Some(proxy), true) = (running.proxy.as_deref(), plan.has_proxy()) {
        let workers = proxy.workers();
        if diff::access_log_changed(running.plan, &plan) {
            match access_log::start(&plan.log, proxy.metrics.access_log_dropped()) {
                Ok(log) => access = Some(log),
                Err(e) => problems.push(format!("log.access: {e}")),
            }
        }
        let log = match &access {
            Some(new) => new.as_ref().map(|(l, _)| l),
            None => proxy.access_log(),
        };
        match Proxies::build(
            &plan,
            &proxy.metrics,
            abuse.as_ref(),
            log,
            workers.len(),
            Some(workers),
        ) {
            Ok(mut built) => {
                let (fetched, failed) = built.fetch_jwks().await;
                problems.extend(failed);
                proxies = Some((built, fetched));
            }
            Err(e) => problems.extend(lines(&e)),
        }
        if let (Some(_), Some(tls)) = (&proxy.certs, &plan.tls) {
            match CertStore::load(&tls.certificates) {
                Ok(c) => certs = Some(c),
                Err(e) => problems.extend(lines(&e)),
            }
        }
    }

    let mut ebpf = None;
    if let (Some(_), Some(cfg)) = (&running.plane, &plan.ebpf) {
        let lists = (|| -> Result<DataPlaneLists, crate::config::Issue> {
            Ok(DataPlaneLists {
                kernel: cfg.to_kernel()?,
                allow: cfg.allow_nets()?,
                deny: cfg.deny_targets()?,
            })
        })();
        match lists {
            Ok(l) => ebpf = Some(l),
            Err(i) => problems.push(format!("ebpf.{}: {}", i.key, i.message)),
        }
    }
    let allow = match plan.ebpf.as_ref().map(|e| e.allow_nets()).transpose() {
        Ok(nets) => nets.unwrap_or_default(),
        Err(i) => {
            problems.push(format!("ebpf.{}: {}", i.key, i.message));
            Vec::new()
        }
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    let protected = (allow, Protected::from_config(&plan).await);
    Ok(Staged {
        plan,
        changes,
        abuse,
        replace_abuse,
        proxies,
        access,
        certs,
        ebpf,
        protected,
    })
}

impl Staged {
    /// Applies the staged config. Only the data plane's map writes can still fail (a
    /// syscall); they are logged, and the rest is applied regardless.
    fn commit(mut self, running: &mut Running<'_>) {
        for warning in self.plan.warnings() {
            tracing::warn!("{warning}");
        }
        running
            .deny
            .replace_protected(&self.protected.0, &self.protected.1);
        if self.replace_abuse {
            *running.abuse = self.abuse.clone();
            if let Some(f) = running.fleet.as_deref_mut() {
                match &self.abuse {
                    Some(a) => f.count_for(a.clone()),
                    None => f.stop_counting(),
                }
            }
        }
        if let Some(proxy) = running.proxy.as_deref_mut() {
            if self.replace_abuse {
                proxy.metrics.set_abuse(self.abuse.clone());
            }
            if let Some((built, fetched)) = self.proxies {
                proxy.install(built, fetched, Some(running.plan));
            }
            if let Some(new) = self.access {
                // Requests in flight on the old proxies still hold the old log: its writer
                // gets what they queue until it finishes (off this runtime: it may wait).
                if let Some((_, old)) = std::mem::replace(&mut proxy.access, new) {
                    std::thread::spawn(move || old.finish());
                }
            }
            if let (Some(store), Some(loaded)) = (&proxy.certs, self.certs) {
                store.replace_with(loaded);
                self.changes
                    .applied
                    .push("certificates reloaded".to_owned());
            }
        }
        if let (Some(plane), Some(lists)) = (running.plane.as_deref_mut(), self.ebpf) {
            let maps = plane.maps();
            let applied = (|| -> Result<(), StartError> {
                maps.write_config(&lists.kernel)?;
                apply_ipv6_prefix(maps, running.plan)?;
                maps.replace_allow(&lists.allow)?;
                Ok(maps.sync_config_denies(&lists.deny)?)
            })();
            if let Err(e) = applied {
                tracing::error!(error = %e, "reload: writing the data plane's settings failed");
            }
        }
        *running.plan = self.plan;
        if !self.changes.restart.is_empty() {
            tracing::warn!(
                "reload: changed settings that take effect only after a restart (the running values stay): {}",
                self.changes.restart.join(", ")
            );
        }
        // Last: the line that says the reload is done.
        tracing::info!("config reloaded: {}", self.changes.summary());
    }
}

#[cfg(test)]
mod tests;
