#![forbid(unsafe_code)]

/// mimalloc instead of glibc's malloc: the request path allocates and frees small buffers
/// on two worker threads all the time, and glibc's arenas showed up as ~4% of the
/// gateway's CPU in profiles (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    gateway::cli::main()
}
