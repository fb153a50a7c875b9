//! The `kappa` binary: a thin shell over `kappa_tools::cli`, which tests call directly.

/// mimalloc: a shard never waits on an allocator lock (`kappa_tools::alloc` says why).
#[global_allocator]
static GLOBAL: kappa_tools::alloc::Allocator = kappa_tools::alloc::ALLOCATOR;

fn main() {
    let code = kappa_tools::cli::main_with_args(std::env::args_os());
    std::process::exit(code);
}

#[cfg(test)]
mod tests {
    /// Fails when the `#[global_allocator]` line above is gone (glibc's malloc then serves the
    /// shards, which wait on its arena locks: `kappa_tools::alloc`).
    #[test]
    fn the_global_allocator_is_mimalloc() {
        let block = Box::new([0u8; 64]);
        assert!(kappa_tools::alloc::is_mimalloc_block(block.as_ptr()));
    }
}
