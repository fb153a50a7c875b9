//! A single-threaded "something changed" event for tasks on one glommio executor.
//!
//! The log's appenders, its writer task and its tail readers all wait on conditions over shared
//! `RefCell` state (a position advanced, queue space freed). One event, notified after every state
//! change, with waiters re-checking their condition, is the simplest primitive that is obviously
//! correct on a single thread: no lost wake-ups, because the check and the registration happen in
//! the same poll with no await between them.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::task::{Poll, Waker};

/// Public because the engine's executor-local code (the Kafka front end) waits the same way.
#[derive(Default)]
pub struct Event {
    wakers: RefCell<Vec<Waker>>,
    notified: Cell<u64>,
}

impl Event {
    /// Wakes every waiter; each re-checks its own condition.
    pub fn notify(&self) {
        self.notified.set(self.notified.get().wrapping_add(1));
        let wakers = std::mem::take(&mut *self.wakers.borrow_mut());
        for waker in wakers {
            waker.wake();
        }
    }

    /// Resolves once `condition` returns true, checked now and after every `notify`.
    pub async fn wait_until(&self, mut condition: impl FnMut() -> bool) {
        poll_fn(|cx| {
            if condition() {
                return Poll::Ready(());
            }
            let mut wakers = self.wakers.borrow_mut();
            if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
                wakers.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }

    /// Resolves at the next `notify` after this call.
    pub async fn next(&self) {
        let seen = self.notified.get();
        self.wait_until(|| self.notified.get() != seen).await
    }
}
