//! Loading and attaching the kernel programs, with errors that say what to do.

use super::access::{self, AccessError, Capability};
use super::kernel_log::{self, KernelLevel, KernelLogger};
use super::maps::{MapsError, PinnedMaps};
use crate::config::{DataPlaneMode, EbpfConfig, Issue};
use aya::maps::{MapData, RingBuf};
use aya::programs::{tc, ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode};
use aya::util::KernelVersion;
use aya::{Ebpf, EbpfError, EbpfLoader};
use gateway_common::{map_name, program_name};
use std::io;
use std::path::{Path, PathBuf};

/// The kernel object built by `cargo xtask build` (see build.rs).
static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("GATEWAY_EBPF_OBJECT"));

/// `statfs` magic of a bpf filesystem.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Why the data plane could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    #[error(
        "{} is not on a bpf filesystem, so maps cannot be pinned there: mount one with \
         `mount -t bpf bpf /sys/fs/bpf`, or set [ebpf] pin_path to a directory under a bpffs mount",
        .0.display()
    )]
    BpffsNotMounted(PathBuf),
    #[error("cannot create the pin directory {}: {source}", .path.display())]
    PinDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no such interface `{0}` (see `ip link`)")]
    NoSuchInterface(String),
    #[error(
        "permission denied loading BPF programs: run as root, or grant CAP_BPF, CAP_NET_ADMIN \
         and CAP_PERFMON"
    )]
    PermissionDenied,
    /// The kernel refused, and this process lacks the capability that explains it.
    #[error(
        "missing capability {}: {} ({detail}); grant it (systemd: AmbientCapabilities=CAP_BPF \
         CAP_PERFMON CAP_NET_ADMIN, as in deploy/systemd/gateway.service) or run as root",
        .capability.name(), .capability.needed_for()
    )]
    MissingCapability {
        capability: Capability,
        detail: String,
    },
    #[error(transparent)]
    Pins(#[from] AccessError),
    #[error("the kernel verifier rejected program `{program}`: {source}\nverifier log:\n{log}")]
    Verifier {
        program: &'static str,
        log: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot load the BPF object: {0}")]
    Object(#[source] Box<EbpfError>),
    #[error("program `{0}` is missing from the BPF object (stale build? run `cargo xtask build`)")]
    MissingProgram(&'static str),
    #[error("map `{0}` is missing from the BPF object (stale build? run `cargo xtask build`)")]
    MissingMap(&'static str),
    #[error("cannot attach to `{interface}` in {mode} mode: {source}; {hint}")]
    Attach {
        interface: String,
        mode: DataPlaneMode,
        hint: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("program `{program}`: {source}")]
    Program {
        program: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error(transparent)]
    Maps(#[from] MapsError),
    /// The `[ebpf]` section's key at fault, and why.
    #[error("invalid [ebpf] config: {}", .0.message)]
    Config(Issue),
}

/// A loaded and attached data plane. Dropping it detaches the programs; the pinned maps (and
/// with them the deny list) stay for the next start and for the CLI.
pub struct DataPlane {
    // Owns the programs and their links: dropping it detaches.
    _ebpf: Ebpf,
    maps: PinnedMaps,
    events: Option<RingBuf<MapData>>,
    log: Option<KernelLogger>,
    interface: String,
    mode: DataPlaneMode,
}

impl DataPlane {
    /// Loads the programs, reuses or creates the pinned maps, writes the config into them and
    /// attaches. `cfg` must have been validated.
    pub fn start(cfg: &EbpfConfig) -> Result<Self, LoadError> {
        let interface = cfg
            .interface
            .clone()
            .ok_or_else(|| LoadError::Config(Issue::new("interface", "interface is required")))?;
        if !Path::new("/sys/class/net").join(&interface).exists() {
            return Err(LoadError::NoSuchInterface(interface));
        }
        let level = kernel_log::level_for_tracing();
        let mut ebpf = load_object_with_log(&cfg.pin_path, level)?;
        let mut maps = PinnedMaps::open(&cfg.pin_path)?;
        access::share_pins(&cfg.pin_path, cfg.pin_group.as_deref())?;
        let kernel = cfg.to_kernel().map_err(LoadError::Config)?;
        maps.write_config(&kernel)?;
        maps.replace_allow(&cfg.allow_nets().map_err(LoadError::Config)?)?;
        maps.sync_config_denies(&cfg.deny_targets().map_err(LoadError::Config)?)?;

        attach(&mut ebpf, &interface, cfg.mode)?;
        let events = ebpf
            .take_map(map_name::EVENTS)
            .and_then(|m| RingBuf::try_from(m).ok());
        let log = kernel_log::take(&mut ebpf, kernel_log::ToTracing);
        tracing::info!(
            interface = %interface,
            mode = %cfg.mode,
            pin_path = %cfg.pin_path.display(),
            kernel_log_level = level.0,
            "data plane attached"
        );
        Ok(Self {
            _ebpf: ebpf,
            maps,
            events,
            log,
            interface,
            mode: cfg.mode,
        })
    }

    pub fn maps(&mut self) -> &mut PinnedMaps {
        &mut self.maps
    }

    /// The rate-limit event ring buffer; it has one consumer, so it can be taken once.
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    /// The kernel programs' log reader (see [`kernel_log`]); one consumer, taken once.
    pub fn take_log(&mut self) -> Option<KernelLogger> {
        self.log.take()
    }

    pub fn interface(&self) -> &str {
        &self.interface
    }

    pub fn mode(&self) -> DataPlaneMode {
        self.mode
    }
}

impl Drop for DataPlane {
    fn drop(&mut self) {
        tracing::info!(interface = %self.interface, mode = %self.mode, "data plane detached");
    }
}

/// Loads the object into the kernel with its maps pinned under `pin_path` (reusing maps
/// already pinned there), without loading or attaching any program. The gateway attaches
/// afterwards; tests and benchmarks run the programs through `BPF_PROG_TEST_RUN`. The
/// kernel's own log lines are off.
pub fn load_object(pin_path: &Path) -> Result<Ebpf, LoadError> {
    load_object_with_log(pin_path, KernelLevel::OFF)
}

/// [`load_object`] with the kernel's log lines on up to `level`. The level is frozen into the
/// object, so the verifier removes the logging branches of the levels that are off.
pub fn load_object_with_log(pin_path: &Path, level: KernelLevel) -> Result<Ebpf, LoadError> {
    prepare_pin_dir(pin_path)?;
    // Maps pinned by an older build must match our layout before the programs use them.
    if pin_path.join(map_name::DENY).exists() {
        PinnedMaps::open(pin_path)?;
    }
    let generation_pin = pin_path.join(map_name::GENERATION);
    let generation = super::maps::fresh_generation();
    let ebpf = EbpfLoader::new()
        .default_map_pin_directory(pin_path)
        // The generation is global data (one load per packet); its section's map is reused
        // from, or pinned at, the path where user space writes it. Loading writes the
        // section's value into it: a fresh one, so every source is classified again.
        .map_pin_path(map_name::GENERATION_SECTION, generation_pin.as_path())
        .override_global(map_name::GENERATION_SYMBOL, &generation, true)
        // An older object without the global loads as before.
        .override_global(aya_log::LEVEL, &level.0, false)
        .load(OBJECT)
        .map_err(classify_load_error)?;
    // A pin path for a section the object lacks is ignored: the programs would then read a
    // generation no one writes, and keep stale classifications.
    if ebpf.map(map_name::GENERATION_SECTION).is_none() {
        return Err(LoadError::MissingMap(map_name::GENERATION_SECTION));
    }
    Ok(ebpf)
}

fn prepare_pin_dir(dir: &Path) -> Result<(), LoadError> {
    // The nearest existing ancestor tells which filesystem the pins would land on.
    let mut probe = dir;
    while !probe.exists() {
        match probe.parent() {
            Some(p) => probe = p,
            None => break,
        }
    }
    // f_type is i64 here but narrower on some architectures.
    #[allow(clippy::useless_conversion)]
    let on_bpffs = rustix::fs::statfs(probe).is_ok_and(|st| i64::from(st.f_type) == BPF_FS_MAGIC);
    if !on_bpffs {
        return Err(LoadError::BpffsNotMounted(dir.to_path_buf()));
    }
    std::fs::create_dir_all(dir).map_err(|source| LoadError::PinDir {
        path: dir.to_path_buf(),
        source,
    })
}

fn classify_load_error(e: EbpfError) -> LoadError {
    if let EbpfError::MapError(aya::maps::MapError::CreateError { io_error, .. }) = &e {
        if io_error.kind() == io::ErrorKind::PermissionDenied {
            return lacking(Capability::Bpf, io_error).unwrap_or(LoadError::PermissionDenied);
        }
    }
    LoadError::Object(Box::new(e))
}

/// The error naming `capability` when this process lacks it; `detail` is what the kernel
/// said.
fn lacking(capability: Capability, detail: impl std::fmt::Display) -> Option<LoadError> {
    capability
        .missing()
        .unwrap_or(false)
        .then(|| LoadError::MissingCapability {
            capability,
            detail: detail.to_string(),
        })
}

fn program_error(program: &'static str, e: ProgramError) -> LoadError {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            if io_error.kind() == io::ErrorKind::PermissionDenied && log.is_empty() {
                // XDP and TC are networking programs: loading them needs CAP_NET_ADMIN too.
                lacking(Capability::Bpf, &io_error)
                    .or_else(|| lacking(Capability::NetAdmin, &io_error))
                    .unwrap_or(LoadError::PermissionDenied)
            } else if let Some(e) = lacking(
                Capability::Perfmon,
                format_args!(
                    "the verifier said: {}",
                    log.lines()
                        .rev()
                        .find(|l| !l.trim().is_empty())
                        .unwrap_or("")
                ),
            ) {
                e
            } else {
                LoadError::Verifier {
                    program,
                    log,
                    source: io_error,
                }
            }
        }
        source => LoadError::Program {
            program,
            source: Box::new(source),
        },
    }
}

fn attach(ebpf: &mut Ebpf, interface: &str, mode: DataPlaneMode) -> Result<(), LoadError> {
    let attach_err = |hint: &'static str| {
        move |source: ProgramError| {
            lacking(Capability::NetAdmin, &source).unwrap_or_else(|| LoadError::Attach {
                interface: interface.to_string(),
                mode,
                hint,
                source: Box::new(source),
            })
        }
    };
    match mode {
        DataPlaneMode::Xdp | DataPlaneMode::XdpGeneric => {
            let prog: &mut Xdp = ebpf
                .program_mut(program_name::XDP)
                .ok_or(LoadError::MissingProgram(program_name::XDP))?
                .try_into()
                .map_err(|e| program_error(program_name::XDP, e))?;
            load_program(|| prog.load()).map_err(|e| program_error(program_name::XDP, e))?;
            if mode == DataPlaneMode::Xdp {
                prog.attach(interface, XdpMode::Driver).map_err(attach_err(
                    "the interface's driver may not support native XDP (loopback does not): \
                     set [ebpf] mode = \"xdp-generic\" or \"tc\"; if another XDP program is \
                     attached, detach it first (`ip link set dev IFACE xdp off`)",
                ))?;
            } else {
                prog.attach(interface, XdpMode::Skb).map_err(attach_err(
                    "if another XDP program is attached, detach it first \
                     (`ip link set dev IFACE xdp off`)",
                ))?;
            }
        }
        DataPlaneMode::Tc => {
            // Kernels before 6.6 have no tcx; the classic path needs a clsact qdisc.
            let tcx = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0));
            if !tcx {
                // Fails harmlessly when the qdisc exists; a real problem shows at attach.
                if let Err(e) = tc::qdisc_add_clsact(interface) {
                    tracing::debug!(error = %e, interface, "clsact qdisc not added");
                }
            }
            let prog: &mut SchedClassifier = ebpf
                .program_mut(program_name::TC)
                .ok_or(LoadError::MissingProgram(program_name::TC))?
                .try_into()
                .map_err(|e| program_error(program_name::TC, e))?;
            load_program(|| prog.load()).map_err(|e| program_error(program_name::TC, e))?;
            prog.attach(interface, TcAttachType::Ingress)
                .map_err(attach_err(
                    "check that the interface is up and TC is available",
                ))?;
        }
        DataPlaneMode::Off => {}
    }
    Ok(())
}

/// Loads a program, trying again when the kernel answers `EAGAIN`: the verifier gives up
/// with it when a signal is pending for the loading thread (a child exiting, a timer), which
/// says nothing about the program. libbpf tries five times too.
pub fn load_program(
    mut load: impl FnMut() -> Result<(), aya::programs::ProgramError>,
) -> Result<(), aya::programs::ProgramError> {
    const ATTEMPTS: usize = 5;
    let mut attempt = 1;
    loop {
        match load() {
            Err(aya::programs::ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EAGAIN) && attempt < ATTEMPTS =>
            {
                tracing::debug!(
                    attempt,
                    "the kernel asked to load the program again (EAGAIN)"
                );
                attempt += 1;
            }
            other => return other,
        }
    }
}
