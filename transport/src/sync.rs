//! The crate's one locking rule.

/// Locks `mutex`. A panic while it was held leaves no half-done state worth refusing, so a
/// poisoned lock is taken as is.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
