//! What the kernel program tests share: the real object loaded with its maps pinned in a
//! private bpffs and its XDP program through the verifier, and one `BPF_PROG_TEST_RUN`.
// Each test file uses a part of it.
#![allow(dead_code)]

use aya::programs::{TestRun, TestRunOptions, Xdp};
use aya::Ebpf;
use gateway::ebpf::maps::new_deny_entry;
use gateway::ebpf::{loader, PinnedMaps, Target};
use gateway_common::{origin, program_name};
use gateway_tests::netns::Bpffs;
use gateway_tests::privileged;
use std::path::Path;

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

/// The object in the kernel.
pub struct Loaded {
    pub ebpf: Ebpf,
    pub maps: PinnedMaps,
    /// Dropped last: unmounting frees the pins.
    pub _fs: Bpffs,
}

/// Loads the object with `open` (plain, or with a kernel log level) into a bpffs named
/// after `tag` and `name`, and the XDP program through the verifier; `None` on an
/// unprivileged machine that opted out (see `privileged::require`).
pub fn load<E: std::fmt::Debug>(
    tag: &str,
    name: &str,
    open: impl FnOnce(&Path) -> Result<Ebpf, E>,
) -> Option<Loaded> {
    if !privileged::require(name) {
        return None;
    }
    let fs = Bpffs::new(&format!("{tag}-{name}-{}", std::process::id())).expect("bpffs");
    let mut ebpf = open(&fs.pin_path()).expect("load the object");
    let xdp: &mut Xdp = ebpf
        .program_mut(program_name::XDP)
        .expect("the XDP program")
        .try_into()
        .expect("an XDP program");
    loader::load_program(|| xdp.load()).expect("the verifier accepts the XDP program");
    let maps = PinnedMaps::open(&fs.pin_path()).expect("maps are pinned");
    Some(Loaded {
        ebpf,
        maps,
        _fs: fs,
    })
}

/// One test run of `data_in` through `T`'s program `name`.
pub fn run<T>(ebpf: &Ebpf, name: &str, pkt: &[u8]) -> Result<u32, aya::programs::ProgramError>
where
    T: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = aya::TestRunResult>,
    for<'a> &'a T: TryFrom<&'a aya::programs::Program>,
{
    let prog: &T = ebpf
        .program(name)
        .expect("the program")
        .try_into()
        .unwrap_or_else(|_| panic!("{name} has another program type"));
    prog.test_run(TestRunOptions {
        data_in: Some(pkt),
        ..TestRunOptions::default()
    })
    .map(|r| r.return_value)
}

/// The XDP program's verdict on `pkt`.
pub fn xdp(ebpf: &Ebpf, pkt: &[u8]) -> u32 {
    run::<Xdp>(ebpf, program_name::XDP, pkt).expect("test run")
}

/// A manual deny entry for `target` expiring at `expires_ns` (0: never).
pub fn deny(maps: &mut PinnedMaps, target: &str, expires_ns: u64) {
    let t: Target = target.parse().expect("a deny target");
    maps.deny(&t, &new_deny_entry(expires_ns, origin::MANUAL, "test"))
        .expect("write the deny entry");
}
