//! How other threads reach a shard, and learn promptly that it died.
//!
//! A shard's thread can die: a panic outside user code (user code runs under `catch_unwind`)
//! unwinds out of its executor. Its request queue and every reply sender its tasks held are then
//! in limbo: the executor is leaked, not dropped (its tasks' state is unknown after a panic, and
//! their destructors could panic again and abort the process), so nothing disconnects. Without
//! more, a caller would wait forever. So every wait on a shard is a select between what it waits
//! for and the shard's `gone` channel, whose only sender lives on the shard's thread and is
//! dropped when the thread ends, however it ends; the thread first records why
//! (`died`, the panic message). A caller woken by `gone` gets `Error::ShardDied` (or
//! `Error::ShutDown` when the thread ended normally), never a hang.

use std::sync::{Arc, OnceLock, Weak};

use super::client::ClientLatency;
use super::Request;
use crate::engine::Inner;
use crate::sync::Mutex;
use crate::Error;

/// What the engine knows of one shard thread's life.
pub(crate) struct Life {
    shard: u16,
    /// Why the thread died; unset while it runs and after a clean exit. Set before `gone`
    /// disconnects, so a waiter woken by `gone` finds it (`ShardDied`, not `ShutDown`). A lock
    /// (taken on error paths only) from `crate::sync`, so the loom models see that order.
    died: Mutex<Option<String>>,
    /// Never carries a message: disconnects when the shard's thread ends.
    gone: flume::Receiver<()>,
    /// The engine, to wake threads waiting on views when the shard dies.
    engine: OnceLock<Weak<Inner>>,
    /// What the shard's clients saw (`client`): recorded by producer handles on any thread,
    /// drained by the shard's live-latency controller.
    pub(crate) client: Arc<ClientLatency>,
}

/// Held by the shard's thread; dropping it (the thread's end) wakes every waiter.
pub(crate) struct Alive {
    life: Arc<Life>,
    _gone: flume::Sender<()>,
}

impl Alive {
    /// Called once as the shard's thread ends: `Some(message)` when it panicked.
    pub(crate) fn exit(self, panic: Option<String>) {
        if let Some(message) = panic {
            tracing::error!(shard = self.life.shard, %message, "shard thread died");
            let mut died = self.life.died.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            died.get_or_insert(message);
        }
        let life = self.life.clone();
        // Disconnects `gone`: every waiter wakes, after `died` is set.
        drop(self);
        if life.died().is_some() {
            if let Some(engine) = life.engine.get().and_then(Weak::upgrade) {
                engine.wake_view_waiters();
            }
        }
    }
}

pub(crate) fn new_life(shard: u16) -> (Arc<Life>, Alive) {
    let (sender, gone) = flume::bounded(0);
    let life = Arc::new(Life {
        shard,
        died: Mutex::new(None),
        gone,
        engine: OnceLock::new(),
        client: Arc::default(),
    });
    (life.clone(), Alive { life, _gone: sender })
}

impl Life {
    pub(crate) fn set_engine(&self, engine: Weak<Inner>) {
        let _ = self.engine.set(engine);
    }

    /// `Some(ShardDied)` once the shard's thread died.
    pub(crate) fn died(&self) -> Option<Error> {
        let died = self.died.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        died.as_ref()
            .map(|message| Error::ShardDied { shard: self.shard, message: message.clone() })
    }

    /// The error for a shard that is not there: died, or shut down.
    pub(crate) fn error(&self) -> Error {
        self.died().unwrap_or(Error::ShutDown)
    }

    /// Whether the shard's thread has ended (a non-blocking look at `gone`).
    pub(crate) fn is_gone(&self) -> bool {
        self.gone.is_disconnected()
    }

    /// Returns once the shard's thread has ended (at once if it has).
    pub(crate) async fn gone(&self) {
        let _ = self.gone.recv_async().await;
    }
}

/// One shard's request queue and life: sends and waits that end when the shard does.
#[derive(Clone)]
pub(crate) struct Link {
    pub(crate) sender: flume::Sender<Request>,
    pub(crate) life: Arc<Life>,
}

impl Link {
    /// Queues a request, waiting for room; fails once the shard is gone.
    pub(crate) fn send(&self, request: Request) -> Result<(), Error> {
        if self.life.is_gone() {
            return Err(self.life.error());
        }
        // The common case, without a selector: there is room.
        let request = match self.sender.try_send(request) {
            Ok(()) => return Ok(()),
            Err(flume::TrySendError::Disconnected(_)) => return Err(self.life.error()),
            Err(flume::TrySendError::Full(request)) => request,
        };
        flume::Selector::new()
            .send(&self.sender, request, |r| r.map_err(|_| self.life.error()))
            .recv(&self.life.gone, |_| Err(self.life.error()))
            .wait()
    }

    /// `send` for async code.
    pub(crate) async fn send_async(&self, request: Request) -> Result<(), Error> {
        if self.life.is_gone() {
            return Err(self.life.error());
        }
        let send = async { self.sender.send_async(request).await.map_err(|_| self.life.error()) };
        let gone = async {
            let _ = self.life.gone.recv_async().await;
            Err(self.life.error())
        };
        futures_lite::future::or(send, gone).await
    }

    /// Queues a request if there is room now.
    pub(crate) fn try_send(&self, request: Request) -> Result<(), Error> {
        if self.life.is_gone() {
            return Err(self.life.error());
        }
        self.sender.try_send(request).map_err(|e| match e {
            flume::TrySendError::Full(_) => Error::WouldBlock { shard: self.life.shard },
            flume::TrySendError::Disconnected(_) => self.life.error(),
        })
    }

    /// Waits for an item from the shard (a reply, a consumer's batch); fails once the shard is
    /// gone and the item never came.
    pub(crate) fn recv<T>(&self, receiver: &flume::Receiver<Result<T, Error>>) -> Result<T, Error> {
        match self.wait_item(receiver) {
            Some(item) => item,
            None => self.after_gone(receiver),
        }
    }

    /// The wait of `recv`: the next item, or `None` once the shard's thread ended or the
    /// sender was dropped. flume's selector may report `gone` while an item waits too.
    #[cfg(not(loom))]
    fn wait_item<T>(
        &self,
        receiver: &flume::Receiver<Result<T, Error>>,
    ) -> Option<Result<T, Error>> {
        flume::Selector::new().recv(receiver, Result::ok).recv(&self.life.gone, |_| None).wait()
    }

    /// Under loom: flume's selector parks the OS thread, which a loom model cannot run, so the
    /// same two channels are polled (flume itself is not modelled) with a yield to the model
    /// between polls. `gone` is looked at first: the order that tests `after_gone`, as flume may
    /// pick `gone` when both are ready. A poll cannot miss a wake-up, so the models do not see
    /// whether the real wait's is lost; what is and is not modelled, and why the wait stays
    /// flume's, is in `crate::loom_models`.
    #[cfg(loom)]
    fn wait_item<T>(
        &self,
        receiver: &flume::Receiver<Result<T, Error>>,
    ) -> Option<Result<T, Error>> {
        loop {
            if self.life.is_gone() {
                return None;
            }
            match receiver.try_recv() {
                Ok(item) => return Some(item),
                Err(flume::TryRecvError::Disconnected) => return None,
                Err(flume::TryRecvError::Empty) => loom::thread::yield_now(),
            }
        }
    }

    /// A wait ended without an item: the shard's thread ended or the sender was dropped. An item
    /// sent before that is still taken (a reply or a batch never turns into an error), then the
    /// error says why the shard is gone: `ShardDied` with its message, or `ShutDown`.
    fn after_gone<T>(&self, receiver: &flume::Receiver<Result<T, Error>>) -> Result<T, Error> {
        receiver.try_recv().unwrap_or_else(|_| Err(self.life.error()))
    }

    /// `recv` with a time limit: `Ok(None)` when it passed.
    pub(crate) fn recv_timeout<T>(
        &self,
        receiver: &flume::Receiver<Result<T, Error>>,
        timeout: std::time::Duration,
    ) -> Result<Option<T>, Error> {
        let item = flume::Selector::new()
            .recv(receiver, |r| Some(r.ok()))
            .recv(&self.life.gone, |_| Some(None))
            .wait_timeout(timeout);
        match item {
            Ok(Some(Some(item))) => item.map(Some),
            Ok(_) => self.after_gone(receiver).map(Some),
            Err(_) => Ok(None),
        }
    }

    /// `recv` for async code.
    pub(crate) async fn recv_async<T>(
        &self,
        receiver: &flume::Receiver<Result<T, Error>>,
    ) -> Result<T, Error> {
        let item = async { receiver.recv_async().await.ok() };
        let gone = async {
            let _ = self.life.gone.recv_async().await;
            None
        };
        match futures_lite::future::or(item, gone).await {
            Some(item) => item,
            None => self.after_gone(receiver),
        }
    }
}
