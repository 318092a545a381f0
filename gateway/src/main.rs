#![forbid(unsafe_code)]

/// mimalloc instead of glibc's malloc: the request path allocates and frees small buffers
/// on every worker thread all the time; glibc's malloc was ~4% of the gateway's CPU in
/// profiles, mimalloc saves 2-3% CPU per request and returns memory after load (glibc kept
/// ~290 MiB). Built without transparent huge pages: with them, 10 000 idle TLS connections
/// took 42 KiB each instead of 30 (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    gateway::cli::main()
}
