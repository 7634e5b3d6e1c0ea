//! Where the kernels' parallel loops start. rayon hands a parallel loop called from a
//! thread outside its pool to a pool thread and blocks the caller until it is done: two
//! context switches and a wake-up per call. Token-by-token decoding makes hundreds of
//! small parallel calls per token (each product, each norm), so a decoding loop runs on a
//! pool worker instead, where a parallel call starts on the calling thread and the other
//! workers steal from it.

/// Size rayon's global pool's workers' stacks like a main thread's (8 MiB; rayon's
/// default is std's 2 MiB), since whole commands run on a worker ([`on_worker`]). The
/// thread count stays rayon's (RAYON_NUM_THREADS, else one per CPU). Call before anything
/// uses the pool; later calls change nothing.
pub fn configure_global() {
    let _ = rayon::ThreadPoolBuilder::new().stack_size(8 << 20).build_global();
}

/// `f()` run on a worker of the current rayon pool (the global one outside any pool); the
/// caller waits. Already on a worker: `f()` runs here. (`rayon::join` called from outside
/// the pool runs both closures in the pool.)
pub fn on_worker<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    rayon::join(f, || ()).0
}

#[cfg(test)]
mod tests {
    #[test]
    fn runs_on_a_pool_worker_and_returns_the_value() {
        assert!(rayon::current_thread_index().is_none());
        let (on_worker, v) = super::on_worker(|| (rayon::current_thread_index().is_some(), 41 + 1));
        assert!(on_worker);
        assert_eq!(v, 42);
        // nested: stays on the same worker
        let same = super::on_worker(|| {
            let here = rayon::current_thread_index();
            super::on_worker(|| rayon::current_thread_index() == here)
        });
        assert!(same);
    }
}
