//! The crate's one locking rule, and a way to be `Sync` without locking.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`. A panic while it was held leaves no half-done state worth refusing, so a
/// poisoned lock is taken as is.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A value reached only through `&mut`, so that what holds it is `Sync` whenever the value
/// is `Send`: a shared reference can do nothing with it. The mutex is never locked:
/// [`Mutex::get_mut`] borrows through it, which costs a load of its poison flag and no
/// atomic operation.
pub(crate) struct Exclusive<T>(Mutex<T>);

impl<T> Exclusive<T> {
    pub(crate) fn new(value: T) -> Exclusive<T> {
        Exclusive(Mutex::new(value))
    }

    pub(crate) fn get_mut(&mut self) -> &mut T {
        self.0.get_mut().unwrap_or_else(PoisonError::into_inner)
    }
}
